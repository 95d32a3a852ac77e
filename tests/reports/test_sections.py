"""GitLab CI log sections: one per step, with GitLab's markers and timestamps."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.reports import gitlab_sections
from pipeline.reports.sections import log_sections, section_end, section_start
from pipeline.results import Finding, Status, StepResult

from .captured import STARTED, captured_record

GITLAB = {"GITLAB_CI": "true"}
START = re.compile(r"^\x1b\[0Ksection_start:(\d+):([A-Za-z0-9_.-]+)(\[collapsed=true\])?\r\x1b\[0K(.*)$")
END = re.compile(r"^\x1b\[0Ksection_end:(\d+):([A-Za-z0-9_.-]+)\r\x1b\[0K$")


def test_section_markers() -> None:
    assert section_start("pipeline_lint", "lint: passed", 1700000000, collapsed=True) == (
        "\x1b[0Ksection_start:1700000000:pipeline_lint[collapsed=true]\r\x1b[0Klint: passed\n"
    )
    assert section_start("pipeline_lint", "lint:\nfailed", 1700000000, collapsed=False) == (
        "\x1b[0Ksection_start:1700000000:pipeline_lint\r\x1b[0Klint: failed\n"
    )
    assert section_end("pipeline_lint", 1700000004) == (
        "\x1b[0Ksection_end:1700000004:pipeline_lint\r\x1b[0K\n"
    )


def test_sections_only_on_gitlab(tmp_path: Path) -> None:
    record = captured_record(tmp_path / "project")

    assert gitlab_sections(record, {}) is None
    assert gitlab_sections(record, {"GITLAB_CI": "false"}) is None
    assert gitlab_sections(record, GITLAB)


def test_one_section_per_step(tmp_path: Path) -> None:
    record = captured_record(tmp_path / "project")

    text = gitlab_sections(record, GITLAB)

    assert text is not None
    # Split on newlines only, because each marker line contains a carriage return.
    lines = text.split("\n")
    starts = [START.match(line) for line in lines if "section_start" in line]
    ends = [END.match(line) for line in lines if "section_end" in line]
    assert None not in starts
    assert None not in ends
    names = ["pipeline_lint", "pipeline_test", "pipeline_build", "pipeline_scan"]
    assert [match[2] for match in starts if match] == names
    assert [match[2] for match in ends if match] == names
    collapsed = {match[2]: bool(match[3]) for match in starts if match}
    assert collapsed == {
        "pipeline_lint": False, "pipeline_test": False, "pipeline_build": True, "pipeline_scan": False,
    }


def test_section_times_are_the_steps(tmp_path: Path) -> None:
    record = captured_record(tmp_path / "project")

    text = log_sections(record.results[:1])

    start = int(STARTED.timestamp())
    assert f"section_start:{start}:pipeline_lint" in text
    assert f"section_end:{start + 4}:pipeline_lint" in text


def test_sections_hold_findings_and_output(tmp_path: Path) -> None:
    record = captured_record(tmp_path / "project")

    text = log_sections(record.results)

    assert "lint: failed (4.1s) 1 finding" in text
    assert "  bridge_service/api.py:1:1: F401 'os' imported but unused" in text
    assert "  tests/test_planted.py:2: tests/test_planted.py::test_planted_failure assert (1 + 1) == 3" in text
    assert "output (last lines):" in text
    assert "4 findings blocking:" in text


def test_section_lists_ignored_findings() -> None:
    findings = [Finding("trivy", "CVE-1", "low one", "a.py", 1, severity="LOW", blocking=False)]
    step = StepResult("scan", Status.PASSED, "no findings at HIGH", findings=findings)

    text = log_sections([step])

    assert "1 finding below the severity gate:\n  a.py:1: CVE-1 [LOW] low one\n" in text
    assert "[collapsed=true]" in text


@pytest.mark.parametrize(("name", "section"), [("lint", "pipeline_lint"), ("my step!", "pipeline_my_step_")])
def test_section_names_sanitized(name: str, section: str) -> None:
    text = log_sections([StepResult(name, Status.PASSED, "ok")])

    assert f":{section}[collapsed=true]\r" in text
