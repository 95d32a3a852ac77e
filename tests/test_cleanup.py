"""Every container and volume of a run is removed: after a pass, after a
failure and after Ctrl-C. Cache volumes stay."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from conftest import PIPELINE, RUN_LABEL, RunCli, run_resources
from pipeline.project import Project
from pipeline.steps._context import project_cache
from test_test_step import remove_project_caches

pytestmark = pytest.mark.engine


@pytest.fixture(autouse=True)
def project_caches_removed(
    docker_client: docker.DockerClient, tmp_path: Path
) -> Iterator[None]:
    """Remove the cache volumes of the example's copies."""
    yield
    remove_project_caches(docker_client, tmp_path)


SLOW_TEST = "import time\n\n\ndef test_slow():\n    time.sleep(120)\n"


def wait_for_run(client: docker.DockerClient, project: Path, timeout: float) -> str | None:
    """Return the run ID of the first step container working on project."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for container in client.containers.list(filters={"label": RUN_LABEL}):
            labels = container.labels
            if labels.get("io.rgbridge.pipeline.project") == str(project.resolve()):
                return str(container.labels[RUN_LABEL])
        time.sleep(0.5)
    return None


def test_sigint_removes_resources(
    engine: docker.DockerClient, example_copy: Path, cli_env: dict[str, str]
) -> None:
    (example_copy / "tests" / "test_slow.py").write_text(SLOW_TEST)
    process = subprocess.Popen(
        [str(PIPELINE), "test", str(example_copy), "--json"],
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        run_id = wait_for_run(engine, example_copy, timeout=120)
        assert run_id is not None, "the run never created a test step container"
        assert run_resources(engine, run_id)
        time.sleep(2)  # let the step reach pytest
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()

    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    assert json.loads(stdout)["run_id"] == run_id
    assert run_resources(engine, run_id) == []


def test_failed_run_leaves_nothing(
    engine: docker.DockerClient, example_copy: Path, run_cli: RunCli
) -> None:
    (example_copy / "tests" / "test_planted.py").write_text("def test_no():\n    assert False\n")

    result = run_cli("test", str(example_copy), "--json")

    assert result.returncode == 1
    assert result.step("test")["status"] == "failed"
    assert run_resources(engine, result.run_id) == []


def test_cache_volumes_kept(engine: docker.DockerClient, example_copy: Path, run_cli: RunCli) -> None:
    result = run_cli("lint", str(example_copy), "--json")

    assert result.returncode == 0, result.output
    caches = engine.volumes.list(filters={"label": "io.rgbridge.pipeline.cache"})
    keys = {volume.attrs["Labels"]["io.rgbridge.pipeline.cache"] for volume in caches}
    assert project_cache(Project(example_copy)).key in keys
    assert run_resources(engine, result.run_id) == []
