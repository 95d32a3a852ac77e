"""The reports folder is written without following symbolic links that a
project commits, and a run rejects a reports folder reached through one."""

from __future__ import annotations

import os
from pathlib import Path

import docker
import docker.errors
import pytest

from conftest import ProjectFactory, RunCli, run_resources
from pipeline.errors import UsageError
from pipeline.reports import pipeline_file_names
from pipeline.reports._files import check_folder, move_into, remove, write_text
from pipeline.run import write_record
from reports.captured import captured_record
from test_test_step import remove_project_caches

VICTIM_TEXT = "export PATH=/usr/bin\n"
MINIMAL = {
    "requirements.txt": "",
    "app.py": "X = 1\n",
    "tests/test_app.py": "def test_x():\n    pass\n",
}


def plant_victim(tmp_path: Path, name: str = "victim") -> Path:
    """Write a file outside the project, standing in for ~/.bashrc."""
    victim = tmp_path / "home" / name
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_text(VICTIM_TEXT)
    return victim


# -- the helpers ---------------------------------------------------------------


def test_write_replaces_link(tmp_path: Path) -> None:
    victim = plant_victim(tmp_path)
    link = tmp_path / "test.log"
    link.symlink_to(victim)

    write_text(link, "step output\n")

    assert victim.read_text() == VICTIM_TEXT
    assert not link.is_symlink()
    assert link.read_text() == "step output\n"


def test_write_replaces_dangling_link(tmp_path: Path) -> None:
    link = tmp_path / "run.json"
    link.symlink_to(tmp_path / "home" / "created-by-link")

    write_text(link, "{}\n")

    assert not (tmp_path / "home" / "created-by-link").exists()
    assert link.read_text() == "{}\n"


def test_move_skips_link_source(tmp_path: Path) -> None:
    victim = plant_victim(tmp_path)
    source = tmp_path / "scratch" / "junit.xml"
    source.parent.mkdir()
    source.symlink_to(victim)
    target = tmp_path / "junit.xml"

    assert move_into(source, target) is False
    assert not target.exists()


def test_move_replaces_link_target(tmp_path: Path) -> None:
    victim = plant_victim(tmp_path)
    source = tmp_path / "scratch" / "flake8.txt"
    source.parent.mkdir()
    source.write_text("a.py:1:1: F401 'os' imported but unused\n")
    target = tmp_path / "flake8.txt"
    target.symlink_to(victim)

    assert move_into(source, target) is True
    assert victim.read_text() == VICTIM_TEXT
    assert not target.is_symlink()
    assert target.read_text().startswith("a.py:1:1: F401")


def test_remove_rejects_folder(tmp_path: Path) -> None:
    (tmp_path / "junit.xml").mkdir()

    with pytest.raises(UsageError, match="is a folder"):
        remove(tmp_path / "junit.xml")


@pytest.mark.parametrize(
    "linked", [".pipeline", ".pipeline/reports"], ids=["parent", "folder"]
)
def test_check_rejects_linked_folder(tmp_path: Path, linked: str) -> None:
    project = tmp_path / "project"
    outside = tmp_path / "outside"
    outside.mkdir()
    (project / linked).parent.mkdir(parents=True, exist_ok=True)
    (project / linked).symlink_to(outside, target_is_directory=True)

    with pytest.raises(UsageError, match="symbolic link"):
        check_folder(project, project / ".pipeline" / "reports")


def test_check_accepts_real_folder(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / ".pipeline" / "reports").mkdir(parents=True)

    check_folder(project, project / ".pipeline" / "reports")
    check_folder(project, project / "not-yet" / "reports")


def test_record_written_through_no_link(tmp_path: Path) -> None:
    record = captured_record(tmp_path / "project")
    reports = record.reports_dir
    assert reports is not None
    victims = {}
    for name in ("run.json", "summary.md", "pipeline.sarif", "gl-code-quality-report.json"):
        victims[name] = plant_victim(tmp_path, name)
        (reports / name).symlink_to(victims[name])

    write_record(record, environ={})

    for name, victim in victims.items():
        assert victim.read_text() == VICTIM_TEXT, name
        assert not (reports / name).is_symlink(), name
        assert (reports / name).stat().st_size > 0, name


# -- the CLI ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "linked", [".pipeline", ".pipeline/reports"], ids=["parent", "folder"]
)
def test_cli_rejects_linked_folder(
    project_factory: ProjectFactory, run_cli: RunCli, tmp_path: Path, linked: str
) -> None:
    root = project_factory(MINIMAL)
    # A link within the project is rejected as well as one that leaves it.
    target = root / "docs"
    target.mkdir()
    (root / linked).parent.mkdir(parents=True, exist_ok=True)
    (root / linked).symlink_to(target, target_is_directory=True)

    # No engine is needed: the folder is checked before one is reached.
    result = run_cli("lint", str(root), env={"DOCKER_HOST": f"unix://{tmp_path}/no.sock"})

    assert result.returncode == 2, result.output
    assert "symbolic link" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(target.iterdir()) == []


@pytest.mark.parametrize(
    "linked", [".pipeline", ".pipeline/reports"], ids=["parent", "folder"]
)
def test_cli_rejects_link_outside(
    project_factory: ProjectFactory, run_cli: RunCli, tmp_path: Path, linked: str
) -> None:
    root = project_factory(MINIMAL)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / linked).parent.mkdir(parents=True, exist_ok=True)
    (root / linked).symlink_to(outside, target_is_directory=True)

    result = run_cli("lint", str(root), env={"DOCKER_HOST": f"unix://{tmp_path}/no.sock"})

    assert result.returncode == 2, result.output
    assert "Traceback" not in result.stderr
    assert list(outside.iterdir()) == []


def test_cli_rejects_file_as_folder(
    project_factory: ProjectFactory, run_cli: RunCli, tmp_path: Path
) -> None:
    root = project_factory({**MINIMAL, ".pipeline": "not a folder\n"})

    result = run_cli("lint", str(root), env={"DOCKER_HOST": f"unix://{tmp_path}/no.sock"})

    assert result.returncode == 2, result.output
    assert "is a file" in result.stderr


@pytest.mark.engine
def test_run_never_writes_through_links(
    engine: docker.DockerClient, project_factory: ProjectFactory, run_cli: RunCli, tmp_path: Path
) -> None:
    files = {
        **MINIMAL,
        "Dockerfile": "FROM python:3.11-slim\nCOPY app.py /app/\nUSER 10001\n",
        "pipeline.toml": "[scan]\nignore_unfixed = true\n",
    }
    root = project_factory(files, name="reports-link-probe")
    reports = root / ".pipeline" / "reports"
    reports.mkdir(parents=True)
    victims = {}
    for name in pipeline_file_names():
        victims[name] = plant_victim(tmp_path, name)
        (reports / name).symlink_to(victims[name])

    result = run_cli("ci", str(root), "--json")

    try:
        assert result.returncode == 0, result.output
        assert "Traceback" not in result.stderr
        for name, victim in victims.items():
            assert victim.read_text() == VICTIM_TEXT, name
            path = reports / name
            assert not path.is_symlink(), name
        for name in ("lint.log", "flake8.txt", "test.log", "junit.xml", "build.log",
                     "scan.log", "trivy-image.json", "run.json", "summary.md"):
            assert (reports / name).is_file(), name
        assert run_resources(engine, result.run_id) == []
    finally:
        for tag in result.step("build")["details"].get("tags", []):
            try:
                engine.images.remove(tag)
            except docker.errors.ImageNotFound:
                pass
        remove_project_caches(engine, root)


@pytest.mark.engine
def test_earlier_run_files_removed(
    engine: docker.DockerClient, project_factory: ProjectFactory, run_cli: RunCli
) -> None:
    root = project_factory(MINIMAL)
    reports = root / ".pipeline" / "reports"
    reports.mkdir(parents=True)
    stale = ("test.log", "junit.xml", "scan.log", "trivy-image.json", "build.log",
             "gl-container-scanning-report.json")
    for name in (*stale, "lint.log", "pipeline.sarif"):
        (reports / name).write_text("from an earlier run\n")
    (reports / "notes.txt").write_text("kept\n")
    (reports / "archive").mkdir()
    (reports / "archive" / "test.log").write_text("kept\n")

    result = run_cli("lint", str(root), "--json")

    assert result.returncode == 0, result.output
    for name in stale:
        assert not (reports / name).exists(), name
    for name in ("lint.log", "flake8.txt", "pipeline.sarif", "run.json"):
        assert (reports / name).is_file(), name
        assert (reports / name).read_text() != "from an earlier run\n", name
    assert (reports / "notes.txt").read_text() == "kept\n"
    assert (reports / "archive" / "test.log").read_text() == "kept\n"
    assert os.listdir(reports / "archive") == ["test.log"]
