"""The Swarm deploy target on a real single-node swarm, behind the HAProxy
proxy, with images from the local registry.

The routing mesh cannot respond on a kernel without IPVS, so publishing
through it is checked in the service spec only.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import replace

import docker
import pytest
from swarm_support import (
    REPOSITORY,
    DeploymentFactory,
    Poller,
    environment_settings,
    free_port,
    managed_resources,
    request_text,
)

from pipeline.deploy.base import Release
from pipeline.deploy.proxy import proxy_name
from pipeline.deploy.swarm import SwarmTarget
from pipeline.errors import DeployFailed, UsageError

pytest_plugins = ["swarm_fixtures"]
pytestmark = pytest.mark.engine

StartPoller = Callable[[str], Poller]


def service_spec(client: docker.DockerClient, name: str) -> dict[str, object]:
    spec: dict[str, object] = client.api.inspect_service(name)["Spec"]
    return spec


def inspected_service(client: docker.DockerClient, name: str) -> dict[str, object]:
    service: dict[str, object] = client.api.inspect_service(name)
    return service


def spec_image(client: docker.DockerClient, name: str) -> str:
    return str(client.api.inspect_service(name)["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"])


def test_rollout_serves_every_request(
    swarm_engine: docker.DockerClient,
    app_images: dict[str, str],
    deployment: DeploymentFactory,
    poller: StartPoller,
) -> None:
    service = deployment()
    first = service.target.deploy(service.release(app_images["v1"]), service.progress)
    assert first.status == "deployed"
    assert first.previous is None
    assert request_text(service.url) == "version v1"

    polling = poller(service.url)
    time.sleep(1)
    second = service.target.deploy(service.release(app_images["v2"]), service.progress)
    time.sleep(1)
    polling.stop()

    assert second.status == "deployed"
    assert second.image == app_images["v2"]
    assert second.previous == app_images["v1"]
    assert polling.failures == []
    versions = polling.versions
    assert versions[0] == "v1"
    assert versions[-1] == "v2"
    assert set(versions) == {"v1", "v2"}
    assert len(versions) > 50
    assert service.target.current_image() == app_images["v2"]


def test_failing_health_rolls_back(
    swarm_engine: docker.DockerClient,
    app_images: dict[str, str],
    deployment: DeploymentFactory,
    poller: StartPoller,
) -> None:
    service = deployment()
    service.target.deploy(service.release(app_images["v1"]), service.progress)

    polling = poller(service.url)
    with pytest.raises(DeployFailed) as failure:
        service.target.deploy(service.release(app_images["bad"]), service.progress)
    time.sleep(1)
    polling.stop()

    assert failure.value.rolled_back is True
    assert "rolled it back" in failure.value.message
    assert polling.failures == []
    assert set(polling.versions) == {"v1"}
    assert request_text(service.url) == "version v1"
    assert service.target.current_image() == app_images["v1"]
    assert "a new task ended" in failure.value.message
    status = swarm_engine.api.inspect_service(service.name)["UpdateStatus"]
    assert status["State"] == "rollback_completed"
    with pytest.raises(UsageError, match="already a rollback"):
        service.target.rollback(service.progress)


def test_failing_first_deploy_leaves_nothing(
    swarm_engine: docker.DockerClient,
    app_images: dict[str, str],
    deployment: DeploymentFactory,
) -> None:
    service = deployment()
    release = service.release(app_images["bad"], secret_values={"API_TOKEN": "3c5e-first"}, replicas=1)
    with pytest.raises(DeployFailed) as failure:
        service.target.deploy(release, service.progress)

    assert failure.value.rolled_back is False
    assert "did not start" in failure.value.message
    assert "was removed again" in failure.value.message
    assert managed_resources(swarm_engine, service.name, settle=True) == []
    assert service.target.current_image() is None


def test_failing_url_check_rolls_back(
    swarm_engine: docker.DockerClient,
    app_images: dict[str, str],
    deployment: DeploymentFactory,
) -> None:
    service = deployment()
    service.target.deploy(service.release(app_images["v1"]), service.progress)

    with pytest.raises(DeployFailed) as failure:
        service.target.deploy(service.release(app_images["edge"]), service.progress)

    assert failure.value.rolled_back is True
    assert f"{service.url}/health" in failure.value.message
    assert service.target.current_image() == app_images["v1"]
    assert request_text(service.url) == "version v1"


def test_rollback_returns_to_previous(
    swarm_engine: docker.DockerClient,
    app_images: dict[str, str],
    deployment: DeploymentFactory,
) -> None:
    service = deployment()
    service.target.deploy(service.release(app_images["v1"]), service.progress)
    service.target.deploy(service.release(app_images["v2"]), service.progress)
    assert request_text(service.url) == "version v2"

    outcome = service.target.rollback(service.progress)

    assert outcome.status == "rolled_back"
    assert outcome.image == app_images["v1"]
    assert outcome.previous == app_images["v2"]
    assert service.target.current_image() == app_images["v1"]
    assert spec_image(swarm_engine, service.name) == app_images["v1"]
    assert request_text(service.url) == "version v1"
    with pytest.raises(UsageError, match="already a rollback"):
        service.target.rollback(service.progress)


def test_same_release_is_unchanged(
    swarm_engine: docker.DockerClient,
    app_images: dict[str, str],
    deployment: DeploymentFactory,
) -> None:
    service = deployment()
    service.target.deploy(service.release(app_images["v1"], replicas=1), service.progress)
    version = swarm_engine.api.inspect_service(service.name)["Version"]["Index"]

    again = service.target.deploy(service.release(app_images["v1"], replicas=1), service.progress)

    assert again.status == "unchanged"
    assert swarm_engine.api.inspect_service(service.name)["Version"]["Index"] == version

    scaled = service.target.deploy(service.release(app_images["v1"], replicas=3), service.progress)

    assert scaled.status == "deployed"
    running = swarm_engine.api.tasks(filters={"service": service.name, "desired-state": "running"})
    assert len([task for task in running if task["Status"]["State"] == "running"]) == 3


def test_service_spec_and_labels(
    swarm_engine: docker.DockerClient,
    app_images: dict[str, str],
    deployment: DeploymentFactory,
) -> None:
    service = deployment()
    release = service.release(app_images["v1"], env={"GREETING": "hello"})
    service.target.deploy(release, service.progress)

    inspected = swarm_engine.api.inspect_service(service.name)
    spec = inspected["Spec"]
    labels = spec["Labels"]
    assert labels["io.rgbridge.pipeline.managed-by"] == "rgbridge-pipeline"
    assert labels["io.rgbridge.pipeline.environment"] == "test"
    assert labels["io.rgbridge.pipeline.image"] == app_images["v1"]
    update = spec["UpdateConfig"]
    assert update["Order"] == "start-first"
    assert update["Parallelism"] == 1
    assert update["FailureAction"] == "rollback"
    assert update["Delay"] == 500_000_000
    assert update["Monitor"] == 2_000_000_000
    assert spec["RollbackConfig"]["Order"] == "start-first"
    assert spec["EndpointSpec"]["Mode"] == "dnsrr"
    container = spec["TaskTemplate"]["ContainerSpec"]
    assert container["Env"] == ["GREETING=hello"]
    assert container["Healthcheck"]["Test"][-1] == "http://127.0.0.1:8080/health"
    network = swarm_engine.networks.get(f"{service.name}-net")
    assert network.attrs["Driver"] == "overlay"
    assert network.attrs["Attachable"] is True
    assert spec["TaskTemplate"]["Networks"][0]["Target"] == network.id
    proxy = swarm_engine.containers.get(proxy_name(service.name))
    assert proxy.labels["io.rgbridge.pipeline.service"] == service.name
    assert proxy.attrs["HostConfig"]["PortBindings"]["8080/tcp"] == [
        {"HostIp": "127.0.0.1", "HostPort": str(service.port)}
    ]
    assert any("responds" in message for message in service.messages)


def test_proxy_reloaded_then_recreated(
    swarm_engine: docker.DockerClient,
    app_images: dict[str, str],
    deployment: DeploymentFactory,
    poller: StartPoller,
) -> None:
    service = deployment()
    service.target.deploy(service.release(app_images["v1"]), service.progress)
    first = swarm_engine.containers.get(proxy_name(service.name)).id

    service.target.deploy(service.release(app_images["v2"]), service.progress)
    assert swarm_engine.containers.get(proxy_name(service.name)).id == first

    # 12 replicas need more server slots than the default 10, so the config
    # changes and the running proxy reloads it.
    polling = poller(service.url)
    time.sleep(0.5)
    service.target.deploy(service.release(app_images["v2"], replicas=12), service.progress)
    time.sleep(0.5)
    polling.stop()
    proxy = swarm_engine.containers.get(proxy_name(service.name))
    assert proxy.id == first
    config = proxy.exec_run(["cat", "/usr/local/etc/haproxy/haproxy.cfg"]).output.decode()
    assert f"server-template task 24 tasks.{service.name}:8080" in config
    assert any("configuration reloaded" in message for message in service.messages)
    assert polling.failures == []
    assert set(polling.versions) == {"v2"}

    # A new published port needs a new container.
    port = free_port()
    moved = SwarmTarget(
        service.settings.target.model_copy(update={"published_port": port}), service.name, "test"
    )
    try:
        release = service.release(app_images["v2"], replicas=12, url=f"http://127.0.0.1:{port}")
        outcome = moved.deploy(release, service.progress)
    finally:
        moved.close()
    assert outcome.status == "deployed"
    assert swarm_engine.containers.get(proxy_name(service.name)).id != first
    assert request_text(f"http://127.0.0.1:{port}") == "version v2"
    assert request_text(service.url).startswith("error")


def test_secrets_mounted_and_pruned(
    swarm_engine: docker.DockerClient,
    app_images: dict[str, str],
    deployment: DeploymentFactory,
) -> None:
    service = deployment()

    def secret_names() -> set[str]:
        found = swarm_engine.secrets.list(
            filters={"label": f"io.rgbridge.pipeline.service={service.name}"}
        )
        return {str(secret.name) for secret in found}

    def mounted_token() -> set[str]:
        tasks = swarm_engine.api.tasks(
            filters={"service": service.name, "desired-state": "running"}
        )
        assert tasks
        containers = [
            swarm_engine.containers.get(task["Status"]["ContainerStatus"]["ContainerID"])
            for task in tasks
        ]
        return {
            container.exec_run(["cat", "/run/secrets/API_TOKEN"]).output.decode()
            for container in containers
        }

    service.target.deploy(
        service.release(app_images["v1"], secret_values={"API_TOKEN": "first-9f1c"}, replicas=1),
        service.progress,
    )
    first = secret_names()
    assert len(first) == 1
    assert mounted_token() == {"first-9f1c"}

    service.target.deploy(
        service.release(app_images["v2"], secret_values={"API_TOKEN": "second-77ab"}, replicas=1),
        service.progress,
    )
    second = secret_names()
    assert len(second) == 2  # the previous spec keeps its secret for a rollback
    assert first < second
    assert mounted_token() == {"second-77ab"}

    service.target.deploy(
        service.release(app_images["v1"], secret_values={"API_TOKEN": "third-0d2e"}, replicas=1),
        service.progress,
    )
    third = secret_names()
    assert len(third) == 2
    assert not first & third
    assert mounted_token() == {"third-0d2e"}
    assert not any("9f1c" in message or "77ab" in message for message in service.messages)


def test_ingress_publishes_port(
    swarm_engine: docker.DockerClient,
    app_images: dict[str, str],
    deployment: DeploymentFactory,
) -> None:
    # Without IPVS the routing mesh does not respond here, so the test checks
    # the spec and that no proxy or network was made.
    service = deployment(publish="ingress")
    release = service.release(app_images["v1"], url=None, replicas=1)
    service.target.deploy(release, service.progress)

    endpoint = swarm_engine.api.inspect_service(service.name)["Spec"]["EndpointSpec"]
    assert endpoint["Mode"] == "vip"
    assert endpoint["Ports"] == [
        {
            "Protocol": "tcp",
            "TargetPort": 8080,
            "PublishedPort": service.port,
            "PublishMode": "ingress",
        }
    ]
    assert managed_resources(swarm_engine, service.name) == [service.name]


# Errors that change nothing


@pytest.mark.parametrize("host", ["tcp://127.0.0.1:9", "ssh://nobody@127.0.0.1:9"])
def test_unreachable_engine(
    deployment: DeploymentFactory, app_images: dict[str, str], host: str
) -> None:
    if host.startswith("ssh://") and shutil.which("ssh") is None:
        pytest.skip("no ssh client to reach an ssh:// engine with")
    service = deployment(docker_host=host)
    with pytest.raises(UsageError, match=f"no Docker Engine responds at {host}") as error:
        service.target.deploy(service.release(app_images["v1"]), service.progress)
    assert error.value.hint is not None
    assert "docker_host" in error.value.hint
    with pytest.raises(UsageError, match="no Docker Engine responds"):
        service.target.current_image()


def test_missing_image(
    swarm_engine: docker.DockerClient, deployment: DeploymentFactory
) -> None:
    service = deployment()
    missing = f"{REPOSITORY}@sha256:{'0' * 64}"
    with pytest.raises(UsageError, match="is not in its registry") as error:
        service.target.deploy(service.release(missing), service.progress)
    assert missing in error.value.message
    assert managed_resources(swarm_engine, service.name, settle=True) == []
    assert service.target.current_image() is None


def test_unmanaged_service_left_alone(
    swarm_engine: docker.DockerClient,
    app_images: dict[str, str],
    deployment: DeploymentFactory,
) -> None:
    service = deployment()
    swarm_engine.api.create_service(
        {"ContainerSpec": {"Image": app_images["v1"]}}, name=service.name
    )
    before = swarm_engine.api.inspect_service(service.name)["Version"]["Index"]

    with pytest.raises(UsageError, match="was not created by the pipeline") as error:
        service.target.deploy(service.release(app_images["v2"]), service.progress)

    assert error.value.hint is not None
    assert f"docker service rm {service.name}" in error.value.hint
    after = swarm_engine.api.inspect_service(service.name)
    assert after["Version"]["Index"] == before
    assert after["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == app_images["v1"]
    assert managed_resources(swarm_engine, service.name) == [service.name]
    with pytest.raises(UsageError, match="was not created by the pipeline"):
        service.target.rollback(service.progress)


def test_taken_port_creates_nothing(
    swarm_engine: docker.DockerClient,
    app_images: dict[str, str],
    deployment: DeploymentFactory,
) -> None:
    import socket

    service = deployment()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", service.port))
        listener.listen()
        with pytest.raises(UsageError, match=f"cannot publish 127.0.0.1:{service.port}"):
            service.target.deploy(service.release(app_images["v1"]), service.progress)
    assert managed_resources(swarm_engine, service.name, settle=True) == []


def test_taken_port_on_redeploy_keeps_serving(
    swarm_engine: docker.DockerClient,
    app_images: dict[str, str],
    deployment: DeploymentFactory,
    poller: StartPoller,
) -> None:
    import socket

    service = deployment()
    service.target.deploy(service.release(app_images["v1"]), service.progress)
    spec_before = inspected_service(swarm_engine, service.name)
    proxy_before = swarm_engine.containers.get(proxy_name(service.name)).id

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken_port = int(listener.getsockname()[1])
        moved = SwarmTarget(
            service.settings.target.model_copy(update={"published_port": taken_port}), service.name, "test"
        )
        polling = poller(service.url)
        time.sleep(0.5)
        try:
            release = service.release(app_images["v2"], url=f"http://127.0.0.1:{taken_port}")
            with pytest.raises(UsageError) as raised:
                moved.deploy(release, service.progress)
        finally:
            moved.close()
        time.sleep(0.5)
        polling.stop()

    error = raised.value
    assert f"cannot publish 127.0.0.1:{taken_port}" in error.message
    assert f"still serves 127.0.0.1:{service.port}" in error.message
    assert error.hint is not None
    assert "published_port" in error.hint
    assert polling.failures == []
    assert set(polling.versions) == {"v1"}
    assert request_text(service.url) == "version v1"
    spec_after = inspected_service(swarm_engine, service.name)
    assert spec_after["Version"] == spec_before["Version"]
    assert spec_after["Spec"] == spec_before["Spec"]
    assert swarm_engine.containers.get(proxy_name(service.name)).id == proxy_before
    assert sorted(managed_resources(swarm_engine, service.name)) == sorted(
        [service.name, proxy_name(service.name), f"{service.name}-net"]
    )


def test_failed_proxy_image_restores_old(
    swarm_engine: docker.DockerClient,
    app_images: dict[str, str],
    deployment: DeploymentFactory,
) -> None:
    # The new proxy publishes the same address, so the old one stops first
    # and must start again when the new one fails. python:3.11-slim has no
    # /usr/local/etc/haproxy folder for the configuration.
    service = deployment()
    service.target.deploy(service.release(app_images["v1"]), service.progress)
    proxy_before = swarm_engine.containers.get(proxy_name(service.name)).id
    broken = SwarmTarget(
        service.settings.target.model_copy(update={"proxy_image": "python:3.11-slim"}), service.name, "test"
    )
    try:
        with pytest.raises(UsageError, match="proxy image 'python:3.11-slim' has no folder"):
            broken.deploy(service.release(app_images["v1"]), service.progress)
    finally:
        broken.close()

    proxy = swarm_engine.containers.get(proxy_name(service.name))
    assert proxy.id == proxy_before
    assert proxy.status == "running"
    # The restarted HAProxy resolves the tasks and checks them before it
    # forwards requests again.
    deadline = time.monotonic() + 20
    while request_text(service.url) != "version v1" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert request_text(service.url) == "version v1"
    assert any("the old container serves again" in message for message in service.messages)
    assert sorted(managed_resources(swarm_engine, service.name)) == sorted(
        [service.name, proxy_name(service.name), f"{service.name}-net"]
    )


def test_rollback_without_previous(
    swarm_engine: docker.DockerClient,
    app_images: dict[str, str],
    deployment: DeploymentFactory,
) -> None:
    service = deployment()
    with pytest.raises(UsageError, match="does not exist"):
        service.target.rollback(service.progress)
    service.target.deploy(service.release(app_images["v1"], replicas=1), service.progress)
    with pytest.raises(UsageError, match="no previous spec"):
        service.target.rollback(service.progress)
    assert service.target.current_image() == app_images["v1"]


def test_engine_without_swarm(engine_without_swarm: str, app_images: dict[str, str]) -> None:
    settings = environment_settings(free_port(), docker_host=engine_without_swarm)
    assert settings.target.kind == "swarm"
    target = SwarmTarget(settings.target, "rgbsw-noswarm", "test")
    release = Release("test", settings, "rgbsw-noswarm", app_images["v1"])
    try:
        with pytest.raises(UsageError, match="is not part of a swarm") as error:
            target.deploy(release, print)
        assert error.value.hint is not None
        assert "docker swarm init" in error.value.hint
        with pytest.raises(UsageError, match="is not part of a swarm"):
            target.current_image()
    finally:
        target.close()
    client = docker.DockerClient(base_url=engine_without_swarm)
    assert client.containers.list(all=True) == []
    assert {network.name for network in client.networks.list()} <= {"host", "none", "bridge"}
    client.close()


def test_private_registry_credentials(
    swarm_engine: docker.DockerClient,
    private_image: tuple[str, str, str],
    deployment: DeploymentFactory,
) -> None:
    image, user, password = private_image
    service = deployment()

    with pytest.raises(UsageError, match="no basic auth credentials") as missing:
        service.target.deploy(service.release(image, replicas=1), service.progress)
    assert missing.value.hint is not None
    assert "username and password" in missing.value.hint

    wrong = replace(service.release(image, replicas=1), registry_auth=(user, "wrong-password"))
    with pytest.raises(UsageError, match=f"rejected the login of user '{user}'"):
        service.target.deploy(wrong, service.progress)
    assert managed_resources(swarm_engine, service.name, settle=True) == []

    right = replace(service.release(image, replicas=1), registry_auth=(user, password))
    outcome = service.target.deploy(right, service.progress)

    assert outcome.status == "deployed"
    assert request_text(service.url) == "version v1"
    # The engine had no reference to the image, so the task pulled it.
    assert image in swarm_engine.images.get(image).attrs["RepoDigests"]
    assert password not in json.dumps(swarm_engine.api.inspect_service(service.name))
    assert not any(password in message for message in service.messages)


def test_update_timeout_rolls_back(
    swarm_engine: docker.DockerClient,
    app_images: dict[str, str],
    deployment: DeploymentFactory,
) -> None:
    # A delay of 20 s between tasks keeps the update of 2 tasks from
    # converging within the timeout of 8 s.
    service = deployment(update_delay=20, monitor=1, timeout=8)
    service.target.deploy(service.release(app_images["v1"]), service.progress)

    with pytest.raises(DeployFailed, match="did not converge within 8 s") as failure:
        service.target.deploy(service.release(app_images["v2"]), service.progress)

    assert any("rolling back" in message for message in service.messages)
    deadline = time.monotonic() + 60
    while swarm_engine.api.inspect_service(service.name)["UpdateStatus"]["State"] != "rollback_completed":
        assert time.monotonic() < deadline, "the rollback did not complete within 60 s"
        time.sleep(0.5)
    assert spec_image(swarm_engine, service.name) == app_images["v1"]
    assert request_text(service.url) == "version v1"
    if failure.value.rolled_back:
        assert "rolled back to its previous spec" in failure.value.message
