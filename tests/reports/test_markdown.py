"""The Markdown summary: the steps table, the image and the blocking findings."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.reports._common import RepositoryPaths
from pipeline.reports.markdown import build_summary, code, escape, fence
from pipeline.results import Finding, Status, StepResult

from .captured import IMAGE, IMAGE_ID, captured_record


def summary_of(project: Path, gate: tuple[str, ...] = ("HIGH", "CRITICAL")) -> str:
    record = captured_record(project, gate)
    return build_summary(record, RepositoryPaths.find(project, {}))


def test_summary_steps_table(tmp_path: Path) -> None:
    summary = summary_of(tmp_path / "project")

    assert summary.startswith("## pipeline: failed\n")
    assert "| Step | Status | Time | Result | Findings |" in summary
    assert "| lint | **failed** | 4.1s | 1 finding | 1 blocking |" in summary
    assert "| test | **failed** | 5.6s | 2 of 53 failed | 2 blocking |" in summary
    assert f"| build | passed | 0.7s | built {IMAGE} | none |" in summary
    assert "| scan | **failed** | 11.9s | 4 findings at CRITICAL,HIGH | 4 blocking |" in summary


def test_summary_names_image(tmp_path: Path) -> None:
    summary = summary_of(tmp_path / "project")

    assert f"Image `{IMAGE}`, ID `{IMAGE_ID}`, debian:12.15." in summary


def test_summary_lists_blocking_findings(tmp_path: Path) -> None:
    summary = summary_of(tmp_path / "project")

    assert "### lint: blocking findings\n\n- `bridge_service/api.py:1:1` F401 'os' imported but unused" in summary
    assert "- `tests/test_planted.py:2` tests/test\\_planted.py::test\\_planted\\_failure" in summary
    assert "- `bridge_service/credentials.py:1` github-pat \\[CRITICAL\\] secret" in summary


def test_summary_counts_ignored_findings(tmp_path: Path) -> None:
    summary = summary_of(tmp_path / "project", gate=("LOW",))

    assert "### scan: blocking findings" not in summary
    assert "| scan | passed | 11.9s | no findings at LOW, 4 below the threshold | 4 below the gate |" in summary
    assert "4 findings below the severity gate do not fail the run" in summary


def test_summary_shows_output_without_findings(tmp_path: Path) -> None:
    step = StepResult("test", Status.FAILED, "installing dependencies failed", output="ERROR: no pkg")
    record = captured_record(tmp_path / "project")
    record.results = [step]

    summary = build_summary(record, RepositoryPaths.find(tmp_path / "project", {}))

    assert "<details><summary>test output (last lines)</summary>\n\n```text\nERROR: no pkg\n```\n</details>" in summary


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("a | b", "a \\| b"),
        ("two\nlines", "two lines"),
        ("*bold* _it_ `code` [link] <b>", "\\*bold\\* \\_it\\_ \\`code\\` \\[link\\] \\<b\\>"),
        ("back\\slash", "back\\\\slash"),
    ],
)
def test_markdown_escape(text: str, escaped: str) -> None:
    assert escape(text) == escaped


@pytest.mark.parametrize(
    ("text", "span"),
    [("a.py:1", "`a.py:1`"), ("a`b", "``a`b``"), ("`x", "`` `x ``")],
)
def test_markdown_code_span(text: str, span: str) -> None:
    assert code(text) == span


def test_markdown_fence_longer_than_content() -> None:
    assert fence("```\nx") == "````text\n```\nx\n````"


def test_summary_cuts_long_lists(tmp_path: Path) -> None:
    findings = [Finding("flake8", "E501", "long", "a.py", i, 1) for i in range(1, 61)]
    record = captured_record(tmp_path / "project")
    record.results = [StepResult("lint", Status.FAILED, "60 findings", findings=findings)]

    summary = build_summary(record, RepositoryPaths.find(tmp_path / "project", {}))

    assert summary.count("\n- `a.py:") == 50
    assert "- … and 10 more, in the reports" in summary
