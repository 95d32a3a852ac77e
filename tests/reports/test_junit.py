"""The JUnit report survives a test step that failed before pytest wrote one."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.reports.junit import ensure_junit
from pipeline.results import Status, StepResult
from pipeline.steps.test import parse_junit

from .captured import DATA, unit_test_result


def test_pytest_report_kept(tmp_path: Path) -> None:
    result = unit_test_result(tmp_path)

    path = ensure_junit([result], tmp_path)

    assert path == tmp_path / "junit.xml"
    assert path.read_bytes() == (DATA / "junit-failures.xml").read_bytes()


@pytest.mark.parametrize("status", [Status.FAILED, Status.CANCELLED])
def test_failed_step_gets_error_report(tmp_path: Path, status: Status) -> None:
    (tmp_path / "junit.xml").write_text("<testsuites><testsuite tests='9'/></testsuites>")
    result = StepResult(
        "test", status, "installing dependencies failed: no matching distribution",
        output="ERROR: No matching distribution found for nosuchpkg\x1b[0m",
    )

    path = ensure_junit([result], tmp_path)

    assert path == tmp_path / "junit.xml"
    assert parse_junit(path) == {"tests": 1, "failures": 0, "errors": 1, "skipped": 0}
    text = path.read_text()
    assert "installing dependencies failed: no matching distribution" in text
    assert "No matching distribution found for nosuchpkg" in text
    assert "\x1b" not in text
    assert path in result.reports


def test_passed_step_without_report_left_alone(tmp_path: Path) -> None:
    result = StepResult("test", Status.PASSED, "no tests collected")

    assert ensure_junit([result], tmp_path) is None
    assert not (tmp_path / "junit.xml").exists()


def test_no_test_step_no_report(tmp_path: Path) -> None:
    assert ensure_junit([StepResult("lint", Status.PASSED, "ok")], tmp_path) is None
