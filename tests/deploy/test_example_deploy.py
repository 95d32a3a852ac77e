"""The example service, published to the registry with a password and rolled
out to its `dev` environment on the swarm, through the real CLI.

The example's settings name fixed ports and service names for people who try
it by hand. This test moves them aside with PIPELINE_* variables, as a CI job
would.
"""

from __future__ import annotations

import json
import secrets
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from swarm_support import free_port, remove_service_resources

from conftest import RunCli, git_init, skip_or_fail

pytest_plugins = ["swarm_fixtures"]
pytestmark = pytest.mark.engine

AUTH_PASSWORD_FILE = Path("/etc/rgbridge-pipeline/registry-auth.password")


@pytest.fixture
def service_name(swarm_engine: docker.DockerClient) -> Iterator[str]:
    name = f"rgbex-{secrets.token_hex(3)}"
    yield name
    remove_service_resources(swarm_engine, name)


def test_example_publish_and_deploy(
    example_copy: Path, run_cli: RunCli, swarm_engine: docker.DockerClient, service_name: str
) -> None:
    try:
        password = AUTH_PASSWORD_FILE.read_text().strip()
    except OSError as exc:
        skip_or_fail(f"cannot read {AUTH_PASSWORD_FILE} ({exc.strerror}); run scripts/setup as root")
    git_init(example_copy)
    port = free_port()
    repository = f"127.0.0.1:5001/rgb-example/{service_name}"
    env = {
        "REGISTRY_PASSWORD": password,
        "PIPELINE_ENVIRONMENTS__DEV__REGISTRY__REPOSITORY": repository,
        "PIPELINE_ENVIRONMENTS__DEV__TARGET__SERVICE": service_name,
        "PIPELINE_ENVIRONMENTS__DEV__TARGET__PUBLISHED_PORT": str(port),
        "PIPELINE_ENVIRONMENTS__DEV__URL": f"http://127.0.0.1:{port}",
    }

    published = run_cli("publish", "--env", "dev", "--json", str(example_copy), env=env, timeout=900)

    assert published.returncode == 0, published.output
    reference = published.record()["image"]["published"]["reference"]
    assert reference.startswith(f"{repository}@sha256:")
    sbom = json.loads((example_copy / ".pipeline" / "reports" / "sbom.cdx.json").read_text())
    assert sbom["bomFormat"] == "CycloneDX"

    deployed = run_cli("deploy", "--env", "dev", "-C", str(example_copy), "--json", reference, env=env)

    assert deployed.returncode == 0, deployed.output
    assert json.loads(deployed.stdout)["image"] == reference
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
        health = json.loads(response.read())
    assert health["status"] == "ok"
    spec = swarm_engine.api.inspect_service(service_name)["Spec"]
    assert spec["TaskTemplate"]["ContainerSpec"]["Image"] == reference
    assert password not in published.output + deployed.output
