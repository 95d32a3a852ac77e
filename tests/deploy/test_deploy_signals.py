"""`pipeline deploy` stopped by SIGTERM: the first deploy's service, proxy and
network are removed again, and the audit trail records the attempt."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from swarm_support import REPOSITORY, free_port, managed_resources, remove_service_resources

from conftest import PIPELINE

pytest_plugins = ["swarm_fixtures"]
pytestmark = pytest.mark.engine


@pytest.fixture
def service_name(swarm_engine: docker.DockerClient) -> Iterator[str]:
    name = f"rgbsig-{secrets.token_hex(3)}"
    yield name
    remove_service_resources(swarm_engine, name)


def test_sigterm_during_first_deploy_leaves_nothing(
    swarm_engine: docker.DockerClient,
    app_images: dict[str, str],
    service_name: str,
    tmp_path: Path,
    cli_env: dict[str, str],
) -> None:
    port = free_port()
    (tmp_path / "pipeline.toml").write_text(
        "[environments.dev]\n"
        f'registry = {{ repository = "{REPOSITORY}" }}\n'
        f'target = {{ kind = "swarm", publish = "proxy", published_port = {port}, '
        f'service = "{service_name}", monitor = 2 }}\n'
        "replicas = 2\n"
    )
    process = subprocess.Popen(
        [str(PIPELINE), "deploy", "--env", "dev", "-C", str(tmp_path), app_images["v1"]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env,
    )
    # Wait until the service exists, so that the signal arrives mid-deploy.
    deadline = time.monotonic() + 60
    while not swarm_engine.services.list(filters={"name": service_name}):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the service was never created"
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == 130, stderr
    assert "received SIGTERM during the deploy" in stderr
    assert managed_resources(swarm_engine, service_name, settle=True) == []
    [line] = [json.loads(text) for text in (tmp_path / ".pipeline" / "audit.jsonl").read_text().splitlines()]
    assert line["action"] == "deploy"
    assert line["result"] == "failed"
    assert "received SIGTERM" in line["detail"]
