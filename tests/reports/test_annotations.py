"""GitHub workflow-command annotations: escaping, and one annotation per
captured finding at a level that agrees with the severity gate."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.reports import github_annotations
from pipeline.reports._common import RepositoryPaths
from pipeline.reports.annotations import (
    escape_data,
    escape_property,
    workflow_annotations,
    workflow_command,
)
from pipeline.results import Finding, Status, StepResult

from .captured import IMAGE, captured_record

GITHUB = {"GITHUB_ACTIONS": "true"}


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("plain text", "plain text"),
        ("100% sure", "100%25 sure"),
        ("first\nsecond", "first%0Asecond"),
        ("carriage\rreturn", "carriage%0Dreturn"),
        ("windows\r\nline", "windows%0D%0Aline"),
        ("%0A stays literal", "%250A stays literal"),
        ("a: b, c", "a: b, c"),
    ],
)
def test_escape_data(text: str, escaped: str) -> None:
    assert escape_data(text) == escaped


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("src/app.py", "src/app.py"),
        ("a:b", "a%3Ab"),
        ("a,b", "a%2Cb"),
        ("tests/test_x.py::test_y", "tests/test_x.py%3A%3Atest_y"),
        ("50%,\n:", "50%25%2C%0A%3A"),
        ("\r", "%0D"),
    ],
)
def test_escape_property(text: str, escaped: str) -> None:
    assert escape_property(text) == escaped


def test_workflow_command_format() -> None:
    line = workflow_command(
        "error",
        "bad: 100%\nsecond line",
        {"file": "dir,x/a:b.py", "line": 3, "col": None, "title": "flake8 F401"},
    )

    assert line == "::error file=dir%2Cx/a%3Ab.py,line=3,title=flake8 F401::bad: 100%25%0Asecond line"


def test_workflow_command_without_properties() -> None:
    assert workflow_command("notice", "done", {"file": None}) == "::notice::done"


def test_annotations_only_on_github(tmp_path: Path) -> None:
    record = captured_record(tmp_path / "project")

    assert github_annotations(record, {}) == []
    assert github_annotations(record, {"GITHUB_ACTIONS": "false"}) == []
    assert github_annotations(record, GITHUB)


def test_annotations_for_captured_run(tmp_path: Path) -> None:
    record = captured_record(tmp_path / "project")

    lines = github_annotations(record, GITHUB)

    # Steps take turns: lint, test and scan, then test and scan, then scan.
    assert lines == [
        "::error file=bridge_service/api.py,line=1,col=1,title=flake8 F401::'os' imported but unused",
        "::error file=tests/test_planted.py,line=2,"
        "title=pytest tests/test_planted.py%3A%3Atest_planted_failure::assert (1 + 1) == 3",
        f"::error file=Dockerfile,title=trivy CVE-2023-45853 [CRITICAL]::zlib1g 1:1.2.13.dfsg-1: "
        "zlib: integer overflow and resultant heap-based buffer overflow in "
        f"zipOpenNewFileInZip4_6 (in image {IMAGE})",
        "::error file=tests/test_planted.py,line=5,"
        "title=pytest tests/test_planted.py%3A%3Atest_planted_error::error",
        "::error file=Dockerfile,title=trivy CVE-2020-14343 [CRITICAL]::PyYAML 5.3.1: "
        f"Improper Input Validation in PyYAML (fixed in 5.4) (in image {IMAGE}, "
        "usr/local/lib/python3.11/dist-packages/PyYAML-5.3.1.dist-info/METADATA)",
        "::error file=Dockerfile,title=trivy github-pat [CRITICAL]::secret: GitHub Personal "
        f"Access Token (in image {IMAGE}, app/bridge_service/credentials.py)",
        "::error file=bridge_service/credentials.py,line=1,title=trivy github-pat [CRITICAL]::"
        "secret: GitHub Personal Access Token",
    ]


def test_ignored_findings_not_errors(tmp_path: Path) -> None:
    record = captured_record(tmp_path / "project", gate=("LOW",))

    lines = github_annotations(record, GITHUB)

    trivy = [line for line in lines if "title=trivy" in line]
    assert len(trivy) == 4
    for line in trivy:
        assert line.startswith("::warning ")
        assert line.endswith("(below the severity gate, not blocking)")


@pytest.mark.parametrize(
    ("severity", "command"),
    [("CRITICAL", "warning"), ("HIGH", "warning"), ("MEDIUM", "warning"), ("LOW", "notice"), ("UNKNOWN", "notice")],
)
def test_ignored_finding_command(severity: str, command: str) -> None:
    finding = Finding("trivy", "R1", "message", "a.py", 1, severity=severity, blocking=False)
    step = StepResult("scan", Status.PASSED, "ok", findings=[finding])

    (line,) = workflow_annotations([step], RepositoryPaths(Path("/p"), Path("/p")))

    assert line.startswith(f"::{command} ")


def test_failed_step_without_findings_annotated() -> None:
    step = StepResult("lint", Status.FAILED, "installing flake8 failed")

    lines = workflow_annotations([step], RepositoryPaths(Path("/p"), Path("/p")))

    assert lines == ["::error title=pipeline%3A lint failed::installing flake8 failed"]


def test_annotations_limited_per_command() -> None:
    findings = [Finding("flake8", "E501", f"long {i}", "a.py", i, 1) for i in range(1, 31)]
    step = StepResult("lint", Status.FAILED, "30 findings", findings=findings)

    lines = workflow_annotations([step], RepositoryPaths(Path("/p"), Path("/p")))

    assert len([line for line in lines if line.startswith("::error ")]) == 10
    assert lines[-1] == (
        "::notice title=pipeline::20 more findings are not annotated; the reports list them all."
    )


def test_annotation_paths_from_workspace(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    project = workspace / "examples" / "bridge-service"
    record = captured_record(project)

    lines = github_annotations(record, {**GITHUB, "GITHUB_WORKSPACE": str(workspace)})

    assert lines[0].startswith("::error file=examples/bridge-service/bridge_service/api.py,")
    assert "::error file=examples/bridge-service/Dockerfile,title=trivy CVE-2023-45853" in lines[2]


def test_annotations_share_limit_between_steps() -> None:
    style = [Finding("flake8", "E501", f"long {i}", "a.py", i, 1) for i in range(1, 31)]
    token = Finding("trivy", "github-pat", "secret", "b.py", 1, severity="CRITICAL")
    lint = StepResult("lint", Status.FAILED, "30 findings", findings=style)
    scan = StepResult("scan", Status.FAILED, "1 finding", findings=[token])

    lines = workflow_annotations([lint, scan], RepositoryPaths(Path("/p"), Path("/p")))

    assert lines[1] == "::error file=b.py,line=1,title=trivy github-pat [CRITICAL]::secret"
    assert len([line for line in lines if line.startswith("::error ")]) == 10
