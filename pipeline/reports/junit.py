"""The JUnit XML report: pytest's own, or one that records why pytest wrote none.

The test step copies pytest's ``junit.xml`` also when tests fail. The step
can also fail before pytest writes it, when installing the dependencies
fails or the run is interrupted. This module then writes a report with one
error in its place, so that a CI system shows the failure instead of a
missing or stale file.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from ..results import Status, StepResult
from ..steps.test import REPORT
from ._common import find_step, produced
from ._files import write_bytes

FILE_NAME = Path(REPORT).name
XML_INVALID = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def ensure_junit(results: list[StepResult], folder: Path) -> Path | None:
    """Return the run's JUnit report, writing one for a test step that left none."""
    test = find_step(results, "test")
    if test is None:
        return None
    path = folder / FILE_NAME
    if produced(test, FILE_NAME):
        return path
    if test.status not in (Status.FAILED, Status.CANCELLED):
        return None
    write_bytes(path, failure_report(test))
    test.reports.append(path)
    return path


def failure_report(test: StepResult) -> bytes:
    """Render a JUnit report with one error: the step's summary and output."""
    suites = ElementTree.Element("testsuites", name="pipeline")
    suite = ElementTree.SubElement(
        suites,
        "testsuite",
        name="pipeline",
        tests="1",
        errors="1",
        failures="0",
        skipped="0",
    )
    case = ElementTree.SubElement(
        suite, "testcase", classname="pipeline", name="test step"
    )
    error = ElementTree.SubElement(case, "error", message=_xml_text(test.summary))
    error.text = _xml_text(test.output or test.summary)
    report: bytes = ElementTree.tostring(suites, encoding="utf-8", xml_declaration=True)
    return report


def _xml_text(text: str) -> str:
    """Drop the control characters (such as terminal colours) that XML 1.0 forbids."""
    return XML_INVALID.sub("", text)
