"""The project on disk: detection, ignore rules and content hashes."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import REPOSITORY_NAME
from pipeline.errors import ConfigError, UsageError
from pipeline.project import ALWAYS_EXCLUDED, Project, _release_tag

from conftest import ProjectFactory, git_init


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
    root = project_factory({"requirements.txt": ""}, git=True)
    subprocess.run(
        ["git", "remote", "add", "origin", "https://ci:s3cr3t@git.example.invalid/a/b.git"],
        cwd=root,
        check=True,
    )

    git = Project.open(root).git

    assert git is not None
    assert git.remote_url == "https://git.example.invalid/a/b.git"


def _files(project: Project) -> set[str]:
    return {path.as_posix() for path in project.iter_files(project.ignore_patterns())}


ALLOWLIST = {
    "requirements.txt": "",
    ".gitignore": "*\n!*/\n!*.py\n!requirements.txt\n",
    "app.py": "",
    "notes.md": "",
    "pkg/__init__.py": "",
    "pkg/core/mod.py": "",
    "pkg/core/data.json": "",
}


@pytest.mark.parametrize("git", [True, False], ids=["git", "no-git"])
def test_allowlist_gitignore_keeps_packages(
    project_factory: ProjectFactory, git: bool
) -> None:
    root = project_factory(ALLOWLIST, git=git)

    files = _files(Project.open(root))

    assert {"app.py", "pkg/__init__.py", "pkg/core/mod.py", "requirements.txt"} <= files
    assert "notes.md" not in files
    assert "pkg/core/data.json" not in files


def test_git_lists_untracked_and_tracked_ignored(project_factory: ProjectFactory) -> None:
    root = project_factory(
        {"requirements.txt": "", ".gitignore": "*.log\n", "kept.log": ""}
    )
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "-f", "kept.log"], cwd=root, check=True)
    (root / "new.py").write_text("")
    (root / "debug.log").write_text("")
    nested = root / "nested.gitignore.d"
    nested.mkdir()
    (nested / ".gitignore").write_text("local.txt\n")
    (nested / "local.txt").write_text("")
    (nested / "kept.txt").write_text("")

    files = _files(Project.open(root))

    assert "kept.log" in files  # tracked, so git keeps it although ignored
    assert "new.py" in files
    assert "debug.log" not in files
    assert "nested.gitignore.d/kept.txt" in files
    assert "nested.gitignore.d/local.txt" not in files


@pytest.mark.parametrize("git", [True, False], ids=["git", "no-git"])
def test_fixed_exclusions_not_negatable(project_factory: ProjectFactory, git: bool) -> None:
    root = project_factory(
        {
            "requirements.txt": "",
            ".gitignore": "!.git/\n!.venv/\n!__pycache__/\n!*.pyc\n!.pipeline/\n",
            ".venv/lib/site.py": "",
            "pkg/__pycache__/m.cpython-311.pyc": "",
            ".pipeline/reports/run.json": "{}",
            "app.py": "",
        },
        git=git,
    )
    project = Project.open(root)

    files = _files(project)

    assert files == {"requirements.txt", ".gitignore", "app.py"}
    assert project.ignore_patterns()[-len(ALWAYS_EXCLUDED):] == ALWAYS_EXCLUDED


def test_venv_symlink_excluded(project_factory: ProjectFactory, tmp_path: Path) -> None:
    venv = tmp_path / "elsewhere-venv"
    (venv / "lib").mkdir(parents=True)
    root = project_factory({"requirements.txt": ""})
    (root / ".venv").symlink_to(venv)

    assert _files(Project.open(root)) == {"requirements.txt"}


def test_invalid_gitignore_lines_skipped(
    project_factory: ProjectFactory, caplog: pytest.LogCaptureFixture
) -> None:
    root = project_factory(
        {
            "requirements.txt": "",
            ".gitignore": "[z-a]\n!\nsecrets.env\n",
            "secrets.env": "TOKEN=x\n",
            "app.py": "",
        }
    )
    project = Project.open(root)

    with caplog.at_level(logging.WARNING, logger="pipeline.project"):
        files = _files(project)

    assert files == {"requirements.txt", ".gitignore", "app.py"}
    warnings = [r for r in caplog.records if r.name == "pipeline.project"]
    messages = [record.getMessage() for record in warnings]
    assert any(".gitignore:1:" in message and "[z-a]" in message for message in messages)
    assert any(".gitignore:2:" in message for message in messages)


def test_special_files_skipped(project_factory: ProjectFactory) -> None:
    root = project_factory({"requirements.txt": "", "app.py": "A = 1\n"})
    os.mkfifo(root / "pipe")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(root / "sock"))
    try:
        project = Project.open(root)

        files = _files(project)
        assert files == {"requirements.txt", "app.py"}
        # Reading the FIFO would block forever, so this runs only after the
        # assert above has shown that it is skipped.
        digest = project.content_hash()
    finally:
        server.close()

    assert len(digest) == 64


@pytest.mark.parametrize("git", [True, False], ids=["git", "no-git"])
def test_symlinks_kept_as_links(project_factory: ProjectFactory, git: bool) -> None:
    root = project_factory({"requirements.txt": "", "src/pkg/mod.py": "", "app.py": ""})
    (root / "pkg").symlink_to("src/pkg", target_is_directory=True)
    (root / "main.py").symlink_to("app.py")
    if git:
        git_init(root)
    project = Project.open(root)

    files = _files(project)

    assert {"pkg", "main.py", "src/pkg/mod.py"} <= files
    assert "pkg/mod.py" not in files  # the folder link is not followed
    before = project.content_hash()
    (root / "pkg").unlink()
    (root / "pkg").symlink_to("src", target_is_directory=True)
    assert project.content_hash() != before


def test_content_hash_streams_large_file(project_factory: ProjectFactory) -> None:
    root = project_factory({"requirements.txt": ""})
    size = 512 * 1024 * 1024
    with (root / "big.bin").open("wb") as handle:
        handle.truncate(size)  # sparse: no disk space, but read as zeros
    script = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from pipeline.project import Project\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "Project(Path(sys.argv[1])).content_hash()\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print((after - before) * 1024)\n"
    )

    completed = subprocess.run(
        [sys.executable, "-c", script, str(root)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )

    growth = int(completed.stdout)
    assert growth < size // 8, f"peak memory grew by {growth} bytes"


@pytest.mark.parametrize("git", [True, False], ids=["git", "no-git"])
def test_non_utf8_file_name(project_factory: ProjectFactory, git: bool) -> None:
    root = project_factory({"requirements.txt": ""})
    name = os.fsdecode(b"caf\xe9.py")
    (root / name).write_text("X = 1\n")
    if git:
        git_init(root)
    project = Project.open(root)

    files = _files(project)
    digest = project.content_hash()

    assert name in files
    assert len(digest) == 64


def test_git_status_leaves_index(project_factory: ProjectFactory) -> None:
    root = project_factory({"requirements.txt": "", "app.py": "A = 1\n"}, git=True)
    index = root / ".git" / "index"
    old = index.stat().st_mtime_ns - 10_000_000_000
    os.utime(index, ns=(old, old))
    later = old + 5_000_000_000
    os.utime(root / "app.py", ns=(later, later))  # stale stat data, same content

    git = Project.open(root).git

    assert git is not None
    assert git.dirty is False
    assert index.stat().st_mtime_ns == old


def test_default_reports_dir_not_dirty(project_factory: ProjectFactory) -> None:
    root = project_factory({"requirements.txt": "", "app.py": ""}, git=True)
    (root / ".pipeline" / "reports").mkdir(parents=True)
    (root / ".pipeline" / "reports" / "run.json").write_text("{}")

    git = Project.open(root).git

    assert git is not None
    assert git.dirty is False


def test_reports_dir_not_dirty(project_factory: ProjectFactory) -> None:
    root = project_factory({"requirements.txt": "", "app.py": ""}, git=True)
    (root / ".pipeline" / "reports").mkdir(parents=True)
    (root / ".pipeline" / "reports" / "run.json").write_text("{}")
    (root / "ci-reports").mkdir()
    (root / "ci-reports" / "run.json").write_text("{}")

    default = Project.open(root).git
    custom = Project.open(root, reports_dir=Path("ci-reports"))
    custom_git = custom.git
    (root / "app.py").write_text("A = 2\n")
    changed = Project.open(root, reports_dir=Path("ci-reports")).git

    assert default is not None and default.dirty is True  # ci-reports is unknown
    assert custom_git is not None and custom_git.dirty is False
    assert "ci-reports/run.json" not in _files(custom)
    assert changed is not None and changed.dirty is True


def test_reports_dir_outside_git_not_hashed(project_factory: ProjectFactory) -> None:
    root = project_factory({"requirements.txt": "", "app.py": ""})
    project = Project.open(root, reports_dir=Path("ci-reports"))
    before = project.content_hash()

    (root / "ci-reports").mkdir()
    (root / "ci-reports" / "run.json").write_text("{}")

    assert project.content_hash() == before


@pytest.mark.parametrize(
    ("pyproject", "fragment"),
    [
        ("[project]\nname = 'x'\ndependencies = 'requests'\n", "'project.dependencies'"),
        ("[project]\nname = 'x'\ndependencies = [1]\n", "'project.dependencies'"),
        ("project = 'x'\n", "'project'"),
    ],
    ids=["string", "not-strings", "project-not-table"],
)
def test_invalid_pyproject_rejected(
    project_factory: ProjectFactory, pyproject: str, fragment: str
) -> None:
    root = project_factory({"pyproject.toml": pyproject})

    with pytest.raises(ConfigError) as caught:
        Project.open(root)

    assert fragment in caught.value.message
    assert str(root / "pyproject.toml") in caught.value.message


def test_non_utf8_pyproject_rejected(project_factory: ProjectFactory) -> None:
    root = project_factory({})
    (root / "pyproject.toml").write_bytes(b"[project]\nname = '\xff'\n")

    with pytest.raises(ConfigError, match="not valid UTF-8"):
        Project.open(root)


def test_declared_dependencies_list(project_factory: ProjectFactory) -> None:
    pyproject = "[project]\nname = 'x'\ndependencies = ['requests>=2', 'rich']\n"
    project = Project.open(project_factory({"pyproject.toml": pyproject}))

    assert project.declared_dependencies == ("requests>=2", "rich")


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("My App", "my-app"),
        ("a..b", "a-b"),
        ("a_-x", "a-x"),
        ("a.-y", "a-y"),
        ("my_app", "my_app"),
        ("my__app", "my__app"),
        ("a___b", "a-b"),
        ("x--y", "x--y"),
        ("__init__", "init"),
        ("café", "caf"),
        ("...", "project"),
        ("v1.2", "v1.2"),
    ],
)
def test_name_is_repository_name(tmp_path: Path, folder: str, expected: str) -> None:
    (tmp_path / folder).mkdir()

    name = Project(tmp_path / folder).name

    assert name == expected
    assert REPOSITORY_NAME.fullmatch(name)


def test_long_name_truncated(tmp_path: Path) -> None:
    folder = tmp_path / ("a-" * 120)
    folder.mkdir()

    name = Project(folder).name

    assert len(name) <= 128
    assert REPOSITORY_NAME.fullmatch(name)


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ("build-42\nv1.5.0", "v1.5.0"),
        ("v1.4.0-rc.1\nv1.4.0", "v1.4.0"),
        ("v1.10.0\nv1.9.0", "v1.10.0"),
        ("nightly\nbuild", "build"),
        ("", None),
    ],
)
def test_release_tag_preferred(tags: str, expected: str | None) -> None:
    assert _release_tag(tags) == expected
