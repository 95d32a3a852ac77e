"""The lint, build and scan steps on sample projects with the real CLI: the
caches lint mounts, the build log, errors of the docker client and of Trivy,
and the Trivy ignore file."""

from __future__ import annotations

import os
import re
from pathlib import Path

import docker
import docker.errors
import pytest

from conftest import ProjectFactory, RunCli, run_resources
from test_test_step import project_caches_removed

__all__ = ["project_caches_removed"]  # a fixture, imported for pytest to find

pytestmark = pytest.mark.engine

BASE_IMAGE = "python:3.11-slim"
# The one finding at HIGH or CRITICAL in python:3.11-slim (Debian 12), which
# has no fix there.
ZLIB_CVE = "CVE-2023-45853"
MINIMAL = {"requirements.txt": "", "app.py": "X = 1\n"}


@pytest.fixture
def base_image(engine: docker.DockerClient) -> str:
    """The base image, pulled through the engine's registry mirror if missing."""
    try:
        engine.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        engine.images.pull(BASE_IMAGE)
    return BASE_IMAGE


def docker_adding_invalid_tag(folder: Path) -> Path:
    """Write a docker client wrapper whose builds also get an invalid tag, so
    that the real client fails before BuildKit starts."""
    real = os.environ.get("PIPELINE_DOCKER_CLI", "/usr/bin/docker")
    wrapper = folder / "docker-invalid-tag"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'case "$*" in *--iidfile*) exec {real} "$@" --tag Bad_Name:1 ;; esac\n'
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def test_lint_without_shared_caches(
    engine: docker.DockerClient, project_factory: ProjectFactory, run_cli: RunCli
) -> None:
    # flake8 loads local plugins from the project, so lint runs project code
    # and must not see the shared tools cache, which contains trivy.
    plugin = (
        "import os\n\n"
        "TOOLS_VISIBLE = os.path.exists('/opt/pipeline-tools')\n\n\n"
        "class Plugin:\n"
        "    name = 'probe'\n"
        "    version = '1'\n\n"
        "    def __init__(self, tree):\n"
        "        pass\n\n"
        "    def run(self):\n"
        "        if TOOLS_VISIBLE:\n"
        "            yield 1, 0, 'X100 tools cache visible', type(self)\n"
    )
    root = project_factory(
        {
            "requirements.txt": "",
            "app.py": "X = 1\n",
            "plugins/probe.py": plugin,
            "setup.cfg": "[flake8]\nexclude = plugins\n[flake8:local-plugins]\n"
            "extension =\n    X1 = probe:Plugin\npaths = ./plugins\n",
        }
    )

    result = run_cli("lint", str(root), "--json")

    assert result.returncode == 0, result.output
    assert result.step("lint")["summary"] == "no findings"
    assert run_resources(engine, result.run_id) == []


def test_invalid_tag_names_client_error(
    engine: docker.DockerClient,
    project_factory: ProjectFactory,
    run_cli: RunCli,
    tmp_path: Path,
) -> None:
    root = project_factory({**MINIMAL, "Dockerfile": "FROM python:3.11-slim\n"})
    cli = docker_adding_invalid_tag(tmp_path)

    result = run_cli("build", str(root), "--json", env={"PIPELINE_DOCKER_CLI": str(cli)})

    assert result.returncode == 1, result.output
    step = result.step("build")
    [finding] = step["findings_list"]
    assert "invalid reference format" in finding["message"]
    assert "--help" not in finding["message"]
    assert "path" not in finding  # the Dockerfile is not to blame
    assert finding["tool"] == "docker"
    assert "invalid reference format" in step["summary"]
    log = root / ".pipeline" / "reports" / "build.log"
    assert "invalid reference format" in log.read_text()
    assert str(log) in step["reports"]


def test_build_log_written(
    engine: docker.DockerClient, project_factory: ProjectFactory, run_cli: RunCli
) -> None:
    root = project_factory(
        {**MINIMAL, "Dockerfile": "FROM python:3.11-slim\nRUN echo building-now && exit 3\n"}
    )

    result = run_cli("build", str(root), "--json")

    assert result.returncode == 1, result.output
    [finding] = result.step("build")["findings_list"]
    assert (finding["path"], finding["line"]) == ("Dockerfile", 2)
    log = (root / ".pipeline" / "reports" / "build.log").read_text()
    assert log.startswith("$ ")
    assert "building-now" in log
    assert "exit code: 3" in log
    assert log.rstrip().endswith("[exit code 1]")


def test_rebuild_of_commit_same_image(
    engine: docker.DockerClient, project_factory: ProjectFactory, run_cli: RunCli
) -> None:
    # The created label takes the commit's time, so a rebuild of the same
    # commit is the same image, and a publish of it the same digest.
    root = project_factory(
        {**MINIMAL, "Dockerfile": "FROM python:3.11-slim\nRUN echo rebuild > /marker\n"}, git=True
    )

    first = run_cli("build", str(root), "--json")
    second = run_cli("build", str(root), "--json")

    assert first.returncode == 0, first.output
    assert second.returncode == 0, second.output
    assert first.record()["image"]["id"] == second.record()["image"]["id"]
    labels = engine.images.get(first.record()["image"]["id"]).labels
    assert labels["org.opencontainers.image.created"].endswith("+00:00")


def test_trivy_failure_named(
    base_image: str, project_factory: ProjectFactory, run_cli: RunCli
) -> None:
    # A timeout of 1 ms makes Trivy stop with a fatal error.
    root = project_factory({**MINIMAL, "pipeline.toml": "[scan]\ntimeout = '1ms'\n"})

    result = run_cli("scan", "--image", base_image, str(root), "--json")

    assert result.returncode == 1, result.output
    summary = result.step("scan")["summary"]
    assert re.match(r"trivy (image|fs) failed with exit code 1: run error: ", summary), summary
    assert "--cache-dir" not in summary
    assert "deadline exceeded" in summary


def test_trivyignore_link_inside_project(
    engine: docker.DockerClient,
    base_image: str,
    project_factory: ProjectFactory,
    run_cli: RunCli,
) -> None:
    root = project_factory(
        {**MINIMAL, "security/trivyignore": f"# no fix in Debian 12\n{ZLIB_CVE}\n"}
    )
    (root / ".trivyignore").symlink_to("security/trivyignore")

    result = run_cli("scan", "--image", base_image, str(root), "--json")

    assert result.returncode == 0, result.output
    rules = [finding["rule"] for finding in result.step("scan")["findings_list"]]
    assert ZLIB_CVE not in rules
    assert run_resources(engine, result.run_id) == []


def test_trivyignore_link_outside_rejected(
    base_image: str, project_factory: ProjectFactory, run_cli: RunCli, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere" / "secrets.txt"
    outside.parent.mkdir()
    outside.write_text("not for the container\n")
    root = project_factory(MINIMAL)
    (root / ".trivyignore").symlink_to(outside)

    result = run_cli("scan", "--image", base_image, str(root))

    assert result.returncode == 2, result.output
    assert "outside the project" in result.stderr
    assert "scan.ignorefile" in result.stderr


def test_trivyignore_folder_rejected(
    base_image: str, project_factory: ProjectFactory, run_cli: RunCli
) -> None:
    root = project_factory({**MINIMAL, ".trivyignore/README": "a folder by mistake\n"})

    result = run_cli("scan", "--image", base_image, str(root))

    assert result.returncode == 2, result.output
    assert "is a folder" in result.stderr
