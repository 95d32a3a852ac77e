"""The pipeline's own image builds with the pipeline and runs the CLI."""

from __future__ import annotations

import docker
import pytest

from conftest import REPO_ROOT, RunCli

pytestmark = pytest.mark.engine


def test_own_image_runs_cli(engine: docker.DockerClient, run_cli: RunCli) -> None:
    result = run_cli("build", str(REPO_ROOT), "--json", timeout=900)

    assert result.returncode == 0, result.output
    image_id = result.step("build")["details"]["image_id"]
    output = engine.containers.run(image_id, ["--version"], remove=True)
    assert output.decode().startswith("pipeline, version ")
    user = engine.images.get(image_id).attrs["Config"]["User"]
    assert user == "10001"
