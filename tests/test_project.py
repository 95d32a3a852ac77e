"""The project on disk: detection, ignore rules and content hashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import UsageError
from pipeline.project import Project

from conftest import ProjectFactory


def test_ignored_paths_excluded(project_factory: ProjectFactory) -> None:
    root = project_factory(
        {
            "requirements.txt": "",
            "app.py": "",
            ".gitignore": "secrets.env\nbuild/\n",
            ".dockerignore": "tests/\n",
            "secrets.env": "TOKEN=x\n",
            "build/out.txt": "",
            ".venv/lib/site.py": "",
            "pkg/__pycache__/m.pyc": "",
            ".pipeline/reports/run.json": "{}",
            "tests/test_app.py": "",
        }
    )
    project = Project.open(root)

    files = {path.as_posix() for path in project.iter_files(project.ignore_patterns())}

    assert files == {"requirements.txt", "app.py", ".gitignore", ".dockerignore", "tests/test_app.py"}


def test_content_hash_tracks_changes(project_factory: ProjectFactory) -> None:
    root = project_factory({"requirements.txt": "", "app.py": "A = 1\n", ".gitignore": "*.log\n"})
    project = Project.open(root)
    before = project.content_hash()

    (root / "debug.log").write_text("ignored\n")
    unchanged = project.content_hash()
    (root / "app.py").write_text("A = 2\n")
    changed = project.content_hash()

    assert unchanged == before
    assert changed != before


def test_revision_outside_git(project_factory: ProjectFactory) -> None:
    project = Project.open(project_factory({"requirements.txt": ""}))

    assert project.git is None
    assert project.revision.startswith("src-")


def test_revision_in_git(project_factory: ProjectFactory) -> None:
    root = project_factory({"requirements.txt": ""}, git=True)
    project = Project.open(root)

    assert project.git is not None
    assert len(project.revision) == 40
    assert project.git.dirty is False
    assert project.git.tag is None


@pytest.mark.parametrize(
    ("files", "installable"),
    [
        ({"pyproject.toml": "[project]\nname = 'x'\nversion = '1'\n"}, True),
        ({"pyproject.toml": "[tool.pipeline]\n"}, False),
        ({"requirements.txt": "", "setup.py": ""}, True),
        ({"requirements.txt": ""}, False),
    ],
    ids=["project-table", "tool-only", "setup-py", "requirements-only"],
)
def test_installable_detection(
    project_factory: ProjectFactory, files: dict[str, str], installable: bool
) -> None:
    assert Project.open(project_factory(files)).is_installable is installable


def test_file_is_not_a_project(tmp_path: Path) -> None:
    file = tmp_path / "Dockerfile"
    file.write_text("FROM scratch\n")

    with pytest.raises(UsageError, match="is a file"):
        Project.open(file)


def test_credentials_dropped_from_remote(project_factory: ProjectFactory) -> None:
    import subprocess

    root = project_factory({"requirements.txt": ""}, git=True)
    subprocess.run(
        ["git", "remote", "add", "origin", "https://ci:s3cr3t@git.example.invalid/a/b.git"],
        cwd=root,
        check=True,
    )

    git = Project.open(root).git

    assert git is not None
    assert git.remote_url == "https://git.example.invalid/a/b.git"
