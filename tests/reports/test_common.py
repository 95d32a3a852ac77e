"""Repository paths and the level mapping that every report format shares."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import git_init
from pipeline.reports._common import RepositoryPaths, level, security_score
from pipeline.results import Finding


def finding(severity: str | None, blocking: bool, score: float | None = None) -> Finding:
    return Finding("trivy", "R1", "message", severity=severity, blocking=blocking, score=score)


@pytest.mark.parametrize(
    ("severity", "blocking", "expected"),
    [
        ("CRITICAL", True, "error"),
        ("HIGH", True, "error"),
        ("MEDIUM", True, "error"),
        ("LOW", True, "error"),
        (None, True, "error"),
        ("CRITICAL", False, "warning"),
        ("HIGH", False, "warning"),
        ("MEDIUM", False, "warning"),
        ("LOW", False, "note"),
        ("UNKNOWN", False, "note"),
        (None, False, "warning"),
    ],
)
def test_level_agrees_with_gate(severity: str | None, blocking: bool, expected: str) -> None:
    assert level(finding(severity, blocking)) == expected


@pytest.mark.parametrize(
    ("severity", "blocking", "score", "expected"),
    [
        ("CRITICAL", True, 9.8, 9.8),
        ("CRITICAL", True, None, 9.5),
        ("HIGH", True, None, 8.0),
        ("MEDIUM", True, None, 5.5),
        ("LOW", True, None, 2.0),
        ("UNKNOWN", True, None, 0.0),
        ("CRITICAL", False, 9.8, 6.9),
        ("HIGH", False, None, 6.9),
        ("MEDIUM", False, 5.3, 5.3),
    ],
)
def test_security_score(severity: str, blocking: bool, score: float | None, expected: float) -> None:
    assert security_score(finding(severity, blocking, score)) == expected


def test_paths_outside_git(tmp_path: Path) -> None:
    paths = RepositoryPaths.find(tmp_path, {})

    assert paths.root == tmp_path.resolve()
    assert paths.in_repository is False
    assert paths.project_prefix == ""
    assert paths.project_label == tmp_path.name
    assert paths.relative("./app/x.py") == "app/x.py"


def test_paths_from_git_top_level(tmp_path: Path) -> None:
    project = tmp_path / "services" / "api"
    project.mkdir(parents=True)
    (project / "app.py").write_text("A = 1\n")
    git_init(tmp_path)

    paths = RepositoryPaths.find(project, {})

    assert paths.root == tmp_path.resolve()
    assert paths.in_repository is True
    assert paths.project_prefix == "services/api"
    assert paths.project_label == "services/api"
    assert paths.relative("app/x.py") == "services/api/app/x.py"


def test_paths_prefer_ci_workspace(tmp_path: Path) -> None:
    project = tmp_path / "checkout" / "examples" / "svc"
    project.mkdir(parents=True)

    paths = RepositoryPaths.find(project, {"CI_PROJECT_DIR": str(tmp_path / "checkout")})

    assert paths.relative("Dockerfile") == "examples/svc/Dockerfile"


def test_paths_ignore_unrelated_workspace(tmp_path: Path) -> None:
    (tmp_path / "project").mkdir()

    paths = RepositoryPaths.find(tmp_path / "project", {"GITHUB_WORKSPACE": "/elsewhere"})

    assert paths.root == (tmp_path / "project").resolve()


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/src/app/x.py", "svc/app/x.py"),
        ("./app/x.py", "svc/app/x.py"),
        ("app/../x.py", "svc/x.py"),
        ("/somewhere/else.py", "/somewhere/else.py"),
    ],
)
def test_relative_path_forms(tmp_path: Path, path: str, expected: str) -> None:
    paths = RepositoryPaths(tmp_path / "svc", tmp_path)

    assert paths.relative(path) == expected
