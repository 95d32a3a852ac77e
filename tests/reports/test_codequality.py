"""GitLab Code Quality from the captured flake8 output, with every field that
GitLab's documentation requires checked explicitly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import git_init
from pipeline.reports._common import RepositoryPaths
from pipeline.reports.codequality import build_code_quality, fingerprint, severity
from pipeline.results import Finding

from .captured import captured_record

SEVERITIES = {"info", "minor", "major", "critical", "blocker"}


def issues_of(project: Path, findings: list[Finding] | None = None) -> list[dict[str, Any]]:
    record = captured_record(project)
    if findings is not None:
        record.results[0].findings = findings
    issues = build_code_quality(record.results, RepositoryPaths.find(project, {}))
    assert issues is not None
    return issues


def test_code_quality_required_fields(tmp_path: Path) -> None:
    issues = issues_of(tmp_path / "project")

    assert len(issues) == 1
    issue = issues[0]
    assert isinstance(issue["description"], str) and issue["description"]
    assert isinstance(issue["check_name"], str) and issue["check_name"]
    assert isinstance(issue["fingerprint"], str) and issue["fingerprint"]
    assert issue["severity"] in SEVERITIES
    assert isinstance(issue["location"]["path"], str)
    assert isinstance(issue["location"]["lines"]["begin"], int)
    assert issue["location"]["lines"]["begin"] >= 1


def test_code_quality_flake8_values(tmp_path: Path) -> None:
    issue = issues_of(tmp_path / "project")[0]

    assert issue["type"] == "issue"
    assert issue["check_name"] == "flake8/F401"
    assert issue["description"] == "F401 'os' imported but unused"
    assert issue["severity"] == "major"
    assert issue["categories"] == ["Bug Risk"]
    assert issue["location"] == {"path": "bridge_service/api.py", "lines": {"begin": 1}}


def test_code_quality_path_from_repository_root(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    project = repository / "services" / "bridge"
    captured_record(project)
    git_init(repository)

    issue = issues_of(project)[0]

    assert issue["location"]["path"] == "services/bridge/bridge_service/api.py"


def test_fingerprints_unique_and_stable(tmp_path: Path) -> None:
    long_line = "line too long (91 > 88 characters)"
    findings = [
        Finding("flake8", "E501", long_line, "a.py", 3, 89),
        Finding("flake8", "E501", long_line, "a.py", 9, 89),
        Finding("flake8", "E501", long_line, "b.py", 3, 89),
    ]
    moved = [Finding("flake8", "E501", long_line, "a.py", line + 5, 89) for line in (3, 9)]

    first = [issue["fingerprint"] for issue in issues_of(tmp_path / "one", findings)]
    second = [issue["fingerprint"] for issue in issues_of(tmp_path / "two", moved)]

    assert len(set(first)) == 3
    assert second == first[:2]


def test_fingerprint_is_sha256_hex() -> None:
    value = fingerprint("F401", "a.py", "'os' imported but unused", 1)

    assert len(value) == 64
    assert int(value, 16) >= 0


@pytest.mark.parametrize(
    ("rule", "blocking", "expected"),
    [
        ("E999", True, "critical"),
        ("F821", True, "critical"),
        ("F632", True, "critical"),
        ("F401", True, "major"),
        ("E501", True, "minor"),
        ("W291", True, "minor"),
        ("C901", True, "minor"),
        ("F401", False, "info"),
    ],
)
def test_code_quality_severity(rule: str, blocking: bool, expected: str) -> None:
    finding = Finding("flake8", rule, "message", "a.py", 1, 1, blocking=blocking)

    assert severity(finding) == expected


def test_code_quality_missing_without_lint(tmp_path: Path) -> None:
    record = captured_record(tmp_path / "project")
    results = [result for result in record.results if result.name != "lint"]

    assert build_code_quality(results, RepositoryPaths.find(tmp_path / "project", {})) is None
