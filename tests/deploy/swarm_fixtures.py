"""Fixtures for the Swarm deploy tests: sample service images in the local
registry and unique service names whose every resource is removed afterwards.

Test modules load this file with ``pytest_plugins``. A conftest.py here would
replace the ``conftest`` module that the other test modules import from.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
from swarm_support import (
    APP,
    DOCKERFILE,
    PROXY_IMAGE,
    REPOSITORY,
    VERSIONS,
    Deployment,
    DeploymentFactory,
    Poller,
    environment_settings,
    free_port,
    remove_service_resources,
)

from conftest import REGISTRY, skip_or_fail
from pipeline.deploy.swarm import SwarmTarget

DOCKER_CLI = os.environ.get("PIPELINE_DOCKER_CLI", "/usr/bin/docker")


@pytest.fixture(scope="session")
def swarm_engine(docker_client: docker.DockerClient) -> docker.DockerClient:
    """The engine, as a swarm manager that can run the proxy image."""
    swarm = docker_client.info().get("Swarm") or {}
    if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
        skip_or_fail("the Docker Engine is not a swarm manager; run scripts/setup")
    try:
        docker_client.images.pull(PROXY_IMAGE)
    except docker.errors.APIError as exc:
        skip_or_fail(f"cannot pull {PROXY_IMAGE} ({exc}); run scripts/setup")
    return docker_client


@pytest.fixture(scope="session")
def app_images(
    swarm_engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Build, push and return the sample images by version, as digest references."""
    references: dict[str, str] = {}
    tags: list[str] = []
    root = tmp_path_factory.mktemp("swarm-app")
    for version in VERSIONS:
        context = root / version
        context.mkdir()
        (context / "app.py").write_text(APP)
        (context / "Dockerfile").write_text(DOCKERFILE.format(version=version))
        tag = f"{REPOSITORY}:{version}"
        _build_and_push(context, tag)
        tags.append(tag)
        digests = swarm_engine.images.get(tag).attrs["RepoDigests"]
        references[version] = next(d for d in digests if d.startswith(REPOSITORY + "@"))
    yield references
    for tag in tags:
        try:
            swarm_engine.images.remove(tag)
        except docker.errors.APIError:
            pass
    for reference in references.values():
        _delete_manifest(reference)


def _build_and_push(context: Path, tag: str) -> None:
    environment = {**os.environ, "DOCKER_BUILDKIT": "1"}
    for command in ([DOCKER_CLI, "build", "-q", "-t", tag, str(context)], [DOCKER_CLI, "push", "-q", tag]):
        completed = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
        assert completed.returncode == 0, f"{command} failed:\n{completed.stderr}"


def _delete_manifest(reference: str) -> None:
    repository, digest = reference.split("@")
    path = repository.removeprefix(REGISTRY + "/")
    request = urllib.request.Request(f"http://{REGISTRY}/v2/{path}/manifests/{digest}", method="DELETE")
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except (urllib.error.URLError, OSError):
        pass  # another test session may have deleted it already


@pytest.fixture
def deployment(swarm_engine: docker.DockerClient) -> Iterator[DeploymentFactory]:
    """Make Swarm targets with unique service names; remove all they created."""
    names: list[str] = []
    targets: list[SwarmTarget] = []

    def make(**target: object) -> Deployment:
        name = f"rgbsw-{secrets.token_hex(3)}"
        port = free_port()
        settings = environment_settings(port, **target)
        assert settings.target.kind == "swarm"
        swarm_target = SwarmTarget(settings.target, name, "test")
        names.append(name)
        targets.append(swarm_target)
        return Deployment(name, port, swarm_target, settings)

    yield make
    for swarm_target in targets:
        swarm_target.close()
    for name in names:
        remove_service_resources(swarm_engine, name)


@pytest.fixture
def poller() -> Iterator[Callable[[str], Poller]]:
    started: list[Poller] = []

    def start(url: str) -> Poller:
        started.append(Poller(url).start())
        return started[-1]

    yield start
    for each in started:
        each.stop()


@pytest.fixture
def engine_without_swarm() -> Iterator[str]:
    """A second, real Docker Engine that is in no swarm; yields its DOCKER_HOST.

    It runs in a network namespace of its own, with its own socket, data and
    exec root and without iptables rules. The namespace matters: dockerd
    started with ``--bridge none`` deletes the host's docker0 interface,
    which the first engine's containers use. The folder is short because
    containerd's socket path must fit in 108 bytes.
    """
    dockerd = shutil.which("dockerd")
    unshare = shutil.which("unshare")
    if dockerd is None or unshare is None or os.geteuid() != 0:
        skip_or_fail("starting a second dockerd needs dockerd, unshare (util-linux) and root")
        raise AssertionError("unreachable")
    had_docker0 = Path("/sys/class/net/docker0").exists()
    root = Path(tempfile.mkdtemp(prefix="rgbsw-"))
    host = f"unix://{root}/docker.sock"
    log = (root / "dockerd.log").open("w")
    process = subprocess.Popen(
        [
            unshare, "--net", dockerd, "--host", host, "--data-root", str(root / "data"),
            "--exec-root", str(root / "exec"), "--pidfile", str(root / "docker.pid"),
            "--bridge", "none", "--iptables=false", "--ip6tables=false", "--ip-masq=false",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                docker.DockerClient(base_url=host).close()
                break
            except docker.errors.DockerException:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the second dockerd did not start; see {root}/dockerd.log")
                time.sleep(0.5)
        yield host
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)
    if had_docker0:
        assert Path("/sys/class/net/docker0").exists(), "the second dockerd removed the host's docker0"


AUTH_REGISTRY = "127.0.0.1:5001"
AUTH_REGISTRY_USER = "pipeline"
AUTH_REGISTRY_PASSWORD_FILE = Path("/etc/rgbridge-pipeline/registry-auth.password")


@pytest.fixture
def private_image(
    swarm_engine: docker.DockerClient, app_images: dict[str, str]
) -> Iterator[tuple[str, str, str]]:
    """Sample version v1 in the registry that requires a password (scripts/setup).

    Yields the digest reference, user name and password. The engine keeps
    no reference to it, so a task must pull it with the credentials.
    """
    try:
        password = AUTH_REGISTRY_PASSWORD_FILE.read_text().strip()
    except OSError:
        skip_or_fail(f"{AUTH_REGISTRY_PASSWORD_FILE} is missing; run scripts/setup")
        raise AssertionError("unreachable")
    repository = f"{AUTH_REGISTRY}/rgbridge-swarm-test/private"
    tag = f"{repository}:{secrets.token_hex(4)}"
    auth = {"username": AUTH_REGISTRY_USER, "password": password}
    image = swarm_engine.images.get(app_images["v1"])
    image.tag(tag)
    try:
        for line in swarm_engine.images.push(tag, auth_config=auth, stream=True, decode=True):
            assert "error" not in line, line
        image.reload()
        reference = next(d for d in image.attrs["RepoDigests"] if d.startswith(repository + "@"))
    finally:
        swarm_engine.images.remove(tag)
    for local in (reference,):
        try:
            swarm_engine.images.remove(local)
        except docker.errors.APIError:
            pass
    yield reference, AUTH_REGISTRY_USER, password
    try:
        swarm_engine.images.remove(reference, force=False)
    except docker.errors.APIError:
        pass
    digest = reference.split("@")[1]
    token = base64.b64encode(f"{AUTH_REGISTRY_USER}:{password}".encode()).decode()
    request = urllib.request.Request(
        f"http://{AUTH_REGISTRY}/v2/rgbridge-swarm-test/private/manifests/{digest}",
        method="DELETE",
        headers={"Authorization": f"Basic {token}"},
    )
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except (urllib.error.URLError, OSError):
        pass
