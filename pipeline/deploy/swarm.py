"""The Docker Swarm deploy target: one replicated service per environment.

A deploy creates the service or updates its spec, and Swarm rolls the update
out one task at a time, starting each new task before it stops an old one.
A new task counts as started only once its health check passes, and a task
that fails in that time or within ``monitor`` seconds after makes Swarm roll
the service back to its previous spec by itself. The target waits for that
outcome through the service's ``UpdateStatus``, then requests the
environment's URL itself and requests a rollback when that fails.

Every check that can fail without touching the swarm (engine, swarm role,
registry login, image, name conflicts) runs before anything is created.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.auth
import docker.errors

from ..config import SwarmSettings
from ..errors import DeployFailed, UsageError
from . import proxy
from .base import Outcome, Progress, Release
from .proxy import ENVIRONMENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL, SERVICE_LABEL

IMAGE_LABEL = "io.rgbridge.pipeline.image"
SPEC_LABEL = "io.rgbridge.pipeline.spec"
SECRET_LABEL = "io.rgbridge.pipeline.secret"
# The URL the deploy checked, kept in the spec so that a rollback, which
# restores an earlier spec, checks the URL that spec was deployed with.
HEALTH_URL_LABEL = "io.rgbridge.pipeline.health-url"

NANOSECONDS = 1_000_000_000
# Health check of every task. Docker runs the first check one interval after
# the container starts, and Swarm counts a task as running only once a check
# has passed. Failures in the start period do not count, so a release that
# never gets healthy fails after about START_PERIOD + RETRIES * INTERVAL.
HEALTH_INTERVAL_SECONDS = 2
HEALTH_TIMEOUT_SECONDS = 2
HEALTH_RETRIES = 3
HEALTH_START_PERIOD_SECONDS = 5
# NOTE: the check runs python3 inside the task, which images based on the
# official Python images have. An image without python3 never gets healthy.
HEALTH_SCRIPT = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout={timeout})"
SECRET_FILE_MODE = 0o444

POLL_SECONDS = 0.5
# How long the cleanup after a failed first deploy waits for the removed
# service's tasks to release its secrets and network.
REMOVE_WAIT_SECONDS = 30
ENGINE_TIMEOUT_SECONDS = 60
# How long the public URL may take to respond after the service converged,
# to let DNS and a proxy or load balancer in front notice the new tasks.
URL_CHECK_SECONDS = 20
URL_REQUEST_TIMEOUT_SECONDS = 5

UPDATE_DONE = "completed"
ROLLBACK_DONE = "rollback_completed"
# UpdateStatus.State values after which Swarm changes nothing more by itself.
FINAL_UPDATE_STATES = {"completed", "paused", "rollback_completed", "rollback_paused"}
ROLLBACK_STATES = {"rollback_started", "rollback_paused", "rollback_completed"}
# States in which a task has ended. A task that fails its health check is
# stopped by Swarm and ends "complete" when its process exits with status 0
# on SIGTERM, so for a task the deploy started any of these is a failure.
ENDED_TASK_STATES = {"complete", "failed", "rejected", "shutdown", "orphaned"}


@dataclass
class _Rollout:
    """The end of a wait for the swarm."""

    ok: bool
    state: str
    message: str = ""


@dataclass
class _Created:
    """The resources one deploy created, so that a failed first deploy can remove them."""

    network: str | None = None
    proxy: bool = False
    service: str | None = None
    secrets: list[str] = field(default_factory=list)


class SwarmTarget:
    """The Swarm service ``name`` of ``environment``, on the engine of ``settings``.

    Nothing connects until a method is called. Methods raise UsageError before
    they change anything when the engine does not respond, is not a swarm
    manager, or the service name belongs to something else.
    """

    def __init__(self, settings: SwarmSettings, name: str, environment: str) -> None:
        self.settings = settings
        self.name = name
        self.environment = environment
        self._client: docker.DockerClient | None = None

    # The Target protocol

    def current_image(self) -> str | None:
        service = self._find_service(self._connect())
        if service is None:
            return None
        return _image_of(service["Spec"])

    def deploy(self, release: Release, progress: Progress) -> Outcome:
        if release.name != self.name:
            raise ValueError(f"release for {release.name!r} given to the target of {self.name!r}")
        _check_digest_reference(release.image)
        client = self._connect()
        self._login(client, release)
        self._check_image(client, release.image)
        service = self._find_service(client)
        network = self._network_name()
        if network is not None:
            self._check_network(client, network)
        proxy_spec = self._proxy_spec(release, network)
        if proxy_spec is not None:
            proxy_spec.check()
            proxy.find(client, self.name)

        fingerprint = self._fingerprint(release, network)
        previous = _image_of(service["Spec"]) if service is not None else None
        if service is not None and (service["Spec"].get("Labels") or {}).get(SPEC_LABEL) == fingerprint:
            return self._keep(client, service, release, proxy_spec, progress)

        created = _Created()
        staged: proxy.Staged | None = None
        try:
            network_id = self._ensure_network(client, network, created)
            secrets = self._ensure_secrets(client, release, created)
            if proxy_spec is not None and proxy.find(client, self.name) is None:
                # A new proxy starts before the service, so that a published
                # port that is taken fails the deploy before the service exists.
                proxy.ensure(client, proxy_spec, progress)
                created.proxy = True
            elif proxy_spec is not None:
                # A new published address gets its own proxy container before
                # the service changes, so that a port that is taken fails the
                # deploy while the old proxy and service keep serving.
                staged = proxy.stage(client, proxy_spec, progress)
            spec = self._service_spec(release, secrets, network_id, fingerprint)
            if service is None:
                self._create(client, spec, release, progress, created)
            else:
                self._update(client, service, spec, release, progress)
            if staged is not None:
                # The URL check below then requests the proxy in its final place.
                proxy.commit(staged, progress)
                staged = None
            elif proxy_spec is not None:
                # NOTE: a new proxy_image or network on the same address is
                # applied here, after the update. When that container fails,
                # the old proxy runs again but the service keeps its new spec.
                proxy.ensure(client, proxy_spec, progress)
            self._check_url(release, progress, rolls_back=service is not None)
        except BaseException as exc:
            if staged is not None:
                proxy.discard(staged)
                progress(f"proxy {proxy.proxy_name(self.name)}: new container removed, the old one keeps serving")
            if service is None:
                self._remove_created(client, created, progress)
                if isinstance(exc, DeployFailed) and created.service is not None:
                    raise DeployFailed(
                        f"{exc.message}; the new service {self.name!r} was removed again",
                        hint=exc.hint,
                    ) from None
            raise
        finally:
            self._prune_secrets(client)

        verb = "created" if service is None else "updated"
        return Outcome(
            "deployed",
            release.image,
            previous,
            detail=f"service {self.name} {verb}, {release.settings.replicas} tasks running",
        )

    def rollback(self, progress: Progress) -> Outcome:
        client = self._connect()
        service = self._find_service(client)
        if service is None:
            raise UsageError(
                f"service {self.name!r} does not exist, so there is nothing to roll back",
                hint=f"deploy to environment {self.environment!r} first",
            )

        previous_spec = service.get("PreviousSpec")
        state = (service.get("UpdateStatus") or {}).get("State")
        if state in ROLLBACK_STATES:
            raise UsageError(
                f"the last change to service {self.name!r} was already a rollback "
                f"({state}), and Swarm keeps only one previous spec",
                hint="deploy the image you want with `pipeline deploy`",
            )
        if previous_spec is None:
            raise UsageError(
                f"service {self.name!r} has no previous spec: it was never updated",
                hint="deploy the image you want with `pipeline deploy`",
            )
        if state == "updating":
            raise UsageError(
                f"service {self.name!r} is being updated right now",
                hint="wait for the update to finish, then roll back",
            )

        current = _image_of(service["Spec"])
        target = _image_of(previous_spec)
        progress(f"service {self.name}: rolling back from {_short(current)} to {_short(target)}")
        earlier = self._request_rollback(client)
        result = self._wait_for_rollout(client, progress, rollback=True, earlier=earlier)
        self._prune_secrets(client)
        if not result.ok:
            raise DeployFailed(
                f"rollback of service {self.name!r} to {target} did not finish: "
                f"{result.state} {result.message}".rstrip(),
                hint=f"inspect it with `docker service ps {self.name}`",
            )

        restored = _api(client).inspect_service(self.name)["Spec"]
        url = (restored.get("Labels") or {}).get(HEALTH_URL_LABEL)
        if url:
            error = _request_until_healthy(url)
            if error is not None:
                raise DeployFailed(
                    f"service {self.name!r} was rolled back to {target}, but {error}",
                    hint="check the proxy or load balancer in front of the service",
                )
            progress(f"service {self.name}: {url} responds")
        return Outcome(
            "rolled_back", target, current, detail=f"service {self.name} rolled back"
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # Checks that change nothing

    def _connect(self) -> docker.DockerClient:
        if self._client is not None:
            return self._client
        environment = dict(os.environ)
        if self.settings.docker_host:
            environment["DOCKER_HOST"] = self.settings.docker_host
        host = environment.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        try:
            # For ssh:// the SDK runs the system's ssh client, as the docker
            # CLI does, instead of needing paramiko.
            client = docker.from_env(
                environment=environment,
                timeout=ENGINE_TIMEOUT_SECONDS,
                use_ssh_client=host.startswith("ssh://"),
            )
            client.ping()
            swarm = client.info().get("Swarm") or {}
        except docker.errors.DockerException as exc:
            raise UsageError(
                f"no Docker Engine responds at {host}: {exc}",
                hint="start the engine, or set docker_host of the environment's "
                "target to a swarm manager's engine",
            ) from None
        state = swarm.get("LocalNodeState")
        if state != "active":
            client.close()
            raise UsageError(
                f"the Docker Engine at {host} is not part of a swarm (swarm state {state!r})",
                hint="run `docker swarm init --advertise-addr ADDRESS` on it, or "
                "set docker_host to a swarm manager",
            )
        if not swarm.get("ControlAvailable"):
            client.close()
            raise UsageError(
                f"the Docker Engine at {host} is a swarm worker, and only managers "
                "can create or update services",
                hint="set docker_host to a manager node's engine",
            )
        self._client = client
        return client

    def _login(self, client: docker.DockerClient, release: Release) -> None:
        """Log in so that the create or update request carries the credentials.

        The SDK then sends them with the request (as ``docker service update
        --with-registry-auth`` does), and Swarm passes them to the nodes that
        pull the image.
        """
        if release.registry_auth is None:
            return
        username, password = release.registry_auth
        registry, _ = docker.auth.resolve_repository_name(release.image)
        try:
            client.login(username=username, password=password, registry=registry, reauth=True)
        except docker.errors.APIError as exc:
            raise UsageError(
                f"registry {registry} rejected the login of user {username!r}: "
                f"{exc.explanation or exc}",
                hint=f"check the registry username and password of environment "
                f"{self.environment!r}",
            ) from None

    def _check_image(self, client: docker.DockerClient, image: str) -> None:
        """Ask the registry, through the engine, whether the image exists."""
        try:
            _api(client).inspect_distribution(image)
        except docker.errors.NotFound:
            raise UsageError(
                f"image {image} is not in its registry",
                hint="publish it with `pipeline publish`, or check the digest",
            ) from None
        except docker.errors.APIError as exc:
            explanation = str(exc.explanation or exc)
            if "auth" in explanation.lower() or "denied" in explanation.lower():
                hint = (
                    f"set the registry username and password of environment "
                    f"{self.environment!r}"
                )
            else:
                hint = "check that the registry is running and the engine can reach it"
            raise UsageError(
                f"cannot look up image {image} in its registry: {explanation}", hint=hint
            ) from None

    def _find_service(self, client: docker.DockerClient) -> dict[str, Any] | None:
        """Return the inspected service, None when there is none.

        Raises UsageError when a service of that name was not created by the
        pipeline for this environment.
        """
        try:
            service: dict[str, Any] = _api(client).inspect_service(self.name)
        except docker.errors.NotFound:
            return None
        if service["Spec"]["Name"] != self.name:
            return None  # the name matched another service's ID prefix
        labels = service["Spec"].get("Labels") or {}
        if labels.get(MANAGED_BY_LABEL) != MANAGED_BY:
            raise UsageError(
                f"service {self.name!r} exists but was not created by the pipeline "
                f"(it has no label {MANAGED_BY_LABEL}={MANAGED_BY}), so it is left "
                "as it is",
                hint="set the target's service to another name, or remove that "
                f"service (docker service rm {self.name}) if it is no longer used",
            )
        owner = labels.get(ENVIRONMENT_LABEL)
        if owner != self.environment:
            raise UsageError(
                f"service {self.name!r} belongs to environment {owner!r}, not "
                f"{self.environment!r}",
                hint="give each environment its own service name",
            )
        return service

    def _network_name(self) -> str | None:
        if self.settings.publish == "proxy":
            return self.settings.network or f"{self.name}-net"
        return self.settings.network

    def _check_network(self, client: docker.DockerClient, name: str) -> None:
        network = _find_network(client, name)
        if network is None:
            return
        if network.get("Driver") != "overlay" or not network.get("Attachable"):
            raise UsageError(
                f"network {name!r} exists but is not an attachable overlay network",
                hint="set the target's network to another name, or recreate it "
                f"with `docker network create -d overlay --attachable {name}`",
            )

    def _proxy_spec(self, release: Release, network: str | None) -> proxy.ProxySpec | None:
        settings = self.settings
        if settings.publish != "proxy":
            return None
        if settings.published_port is None or network is None:
            raise UsageError(
                f"environment {self.environment!r} publishes through a proxy but "
                "sets no published_port",
                hint="set published_port of the target to the port the proxy publishes",
            )
        return proxy.ProxySpec(
            service=self.name,
            environment=self.environment,
            network=network,
            image=settings.proxy_image,
            bind=settings.proxy_bind,
            published_port=settings.published_port,
            port=settings.port,
            health_path=release.settings.health_path,
            replicas=release.settings.replicas,
        )

    # The service spec

    def _fingerprint(self, release: Release, network: str | None) -> str:
        """Return a digest of everything the deploy puts into the service spec."""
        inputs = {
            "image": release.image,
            "environment": self.environment,
            "replicas": release.settings.replicas,
            "env": dict(release.settings.env),
            "secrets": {key: _secret_name(self.name, key, value) for key, value in release.secrets.items()},
            "health": _healthcheck(self.settings.port, release.settings.health_path),
            "endpoint": self._endpoint_spec(),
            "network": network,
            "update": self._update_config(),
            "rollback": self._rollback_config(),
            "health_url": _health_url(release),
        }
        return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()

    def _service_spec(
        self,
        release: Release,
        secrets: Mapping[str, tuple[str, str]],
        network_id: str | None,
        fingerprint: str,
    ) -> dict[str, Any]:
        """Build the Engine API's ServiceSpec, as keyword arguments of the SDK."""
        env = release.settings.env
        container_spec: dict[str, Any] = {
            "Image": release.image,
            "Env": [f"{key}={env[key]}" for key in sorted(env)],
            "Healthcheck": _healthcheck(self.settings.port, release.settings.health_path),
            "Secrets": [
                {
                    "File": {"Name": key, "UID": "0", "GID": "0", "Mode": SECRET_FILE_MODE},
                    "SecretID": secret_id,
                    "SecretName": secret_name,
                }
                for key, (secret_id, secret_name) in sorted(secrets.items())
            ],
        }
        task_template: dict[str, Any] = {"ContainerSpec": container_spec}
        if network_id is not None:
            task_template["Networks"] = [{"Target": network_id}]
        return {
            "name": self.name,
            "task_template": task_template,
            "labels": {
                MANAGED_BY_LABEL: MANAGED_BY,
                ENVIRONMENT_LABEL: self.environment,
                IMAGE_LABEL: release.image,
                SPEC_LABEL: fingerprint,
                **({HEALTH_URL_LABEL: url} if (url := _health_url(release)) else {}),
            },
            "mode": {"Replicated": {"Replicas": release.settings.replicas}},
            "update_config": self._update_config(),
            "rollback_config": self._rollback_config(),
            "endpoint_spec": self._endpoint_spec(),
        }

    def _endpoint_spec(self) -> dict[str, Any]:
        settings = self.settings
        if settings.publish == "proxy":
            return {"Mode": "dnsrr"}
        if settings.published_port is None:
            return {"Mode": "vip"}
        return {
            "Mode": "vip",
            "Ports": [
                {
                    "Protocol": "tcp",
                    "TargetPort": settings.port,
                    "PublishedPort": settings.published_port,
                    "PublishMode": "ingress",
                }
            ],
        }

    def _update_config(self) -> dict[str, Any]:
        return {
            "Parallelism": 1,
            "Delay": int(self.settings.update_delay * NANOSECONDS),
            "FailureAction": "rollback",
            "Monitor": int(self.settings.monitor * NANOSECONDS),
            "MaxFailureRatio": 0,
            "Order": "start-first",
        }

    def _rollback_config(self) -> dict[str, Any]:
        # A rollback restores tasks that are known to work, so it runs
        # without the delay between tasks.
        return {
            "Parallelism": 1,
            "Delay": 0,
            "FailureAction": "pause",
            "Monitor": int(self.settings.monitor * NANOSECONDS),
            "MaxFailureRatio": 0,
            "Order": "start-first",
        }

    # Changes

    def _keep(
        self,
        client: docker.DockerClient,
        service: dict[str, Any],
        release: Release,
        proxy_spec: proxy.ProxySpec | None,
        progress: Progress,
    ) -> Outcome:
        """Leave a service that has the requested spec as it is.

        An update with the same spec would start no rollout but would replace
        the previous spec, which a rollback returns to. Missing tasks are left
        to Swarm, which restarts them, and only waited for.
        """
        progress(f"service {self.name}: already runs {_short(release.image)} as requested")
        earlier_tasks = {task["ID"] for task in _api(client).tasks(filters={"service": service["ID"]})}
        result = self._wait_for_tasks(client, release.settings.replicas, progress, earlier_tasks)
        if not result.ok:
            raise DeployFailed(
                f"service {self.name!r} has the requested spec, but its tasks do not "
                f"all run: {result.message}",
                hint=f"`docker service ps --no-trunc {self.name}` shows the task errors",
            )
        if proxy_spec is not None:
            proxy.ensure(client, proxy_spec, progress)
        self._check_url(release, progress, rolls_back=False)
        return Outcome(
            "unchanged", release.image, release.image,
            detail=f"service {self.name} already runs this image",
        )

    def _ensure_network(
        self, client: docker.DockerClient, name: str | None, created: _Created
    ) -> str | None:
        if name is None:
            return None
        network = _find_network(client, name)
        if network is not None:
            return str(network["Id"])
        result = _api(client).create_network(
            name,
            driver="overlay",
            attachable=True,
            labels={MANAGED_BY_LABEL: MANAGED_BY, SERVICE_LABEL: self.name},
        )
        created.network = name
        return str(result["Id"])

    def _ensure_secrets(
        self, client: docker.DockerClient, release: Release, created: _Created
    ) -> dict[str, tuple[str, str]]:
        """Create the Docker secrets of the release that do not exist yet.

        Docker secrets cannot change, so each value gets its own secret,
        named after a digest of the value. Returns, for each secret name of
        the release, the Docker secret's ID and name.
        """
        result: dict[str, tuple[str, str]] = {}
        for key, value in sorted(release.secrets.items()):
            secret_name = _secret_name(self.name, key, value)
            existing = [
                secret for secret in _api(client).secrets(filters={"name": secret_name})
                if secret["Spec"]["Name"] == secret_name
            ]
            if existing:
                result[key] = (str(existing[0]["ID"]), secret_name)
                continue
            response = _api(client).create_secret(
                secret_name,
                value.encode(),
                labels={
                    MANAGED_BY_LABEL: MANAGED_BY,
                    SERVICE_LABEL: self.name,
                    ENVIRONMENT_LABEL: self.environment,
                    SECRET_LABEL: key,
                },
            )
            created.secrets.append(secret_name)
            result[key] = (str(response["ID"]), secret_name)
        return result

    def _create(
        self,
        client: docker.DockerClient,
        spec: dict[str, Any],
        release: Release,
        progress: Progress,
        created: _Created,
    ) -> None:
        progress(
            f"service {self.name}: creating with {_short(release.image)}, "
            f"{release.settings.replicas} replicas"
        )
        try:
            _api(client).create_service(**spec)
        except docker.errors.APIError as exc:
            raise DeployFailed(
                f"creating service {self.name!r} failed: {exc.explanation or exc}"
            ) from None
        created.service = self.name
        result = self._wait_for_tasks(client, release.settings.replicas, progress)
        if not result.ok:
            raise DeployFailed(
                f"the new service {self.name!r} did not start: {result.message}",
                hint=f"check that {release.image} serves {release.settings.health_path} "
                f"on port {self.settings.port}; `docker service ps --no-trunc "
                f"{self.name}` shows the task errors",
            )

    def _update(
        self,
        client: docker.DockerClient,
        service: dict[str, Any],
        spec: dict[str, Any],
        release: Release,
        progress: Progress,
    ) -> None:
        current = _image_of(service["Spec"])
        if current == release.image:
            progress(f"service {self.name}: updating its spec, image stays {_short(current)}")
        else:
            progress(f"service {self.name}: updating from {_short(current)} to {_short(release.image)}")
        earlier_tasks = {task["ID"] for task in _api(client).tasks(filters={"service": service["ID"]})}
        try:
            _api(client).update_service(service["ID"], service["Version"]["Index"], **spec)
        except docker.errors.APIError as exc:
            raise DeployFailed(
                f"updating service {self.name!r} failed: {exc.explanation or exc}",
                hint="if another deploy changed the service meanwhile, run this one again",
            ) from None
        updated = _api(client).inspect_service(service["ID"])
        if updated["Spec"]["TaskTemplate"] == service["Spec"]["TaskTemplate"]:
            # Only labels or the replica count changed, so Swarm starts no
            # rolling update and sets no UpdateStatus.
            result = self._wait_for_tasks(client, release.settings.replicas, progress, earlier_tasks)
            if not result.ok:
                raise DeployFailed(f"service {self.name!r} did not scale: {result.message}")
            return
        result = self._wait_for_rollout(
            client, progress, rollback=False, earlier=service.get("UpdateStatus")
        )
        if result.state == ROLLBACK_DONE:
            reason = _failed_task_reason(client, self.name, release.image) or result.message
            raise DeployFailed(
                f"the update of service {self.name!r} to {release.image} failed and "
                f"Swarm rolled it back: {reason}",
                hint=f"`docker service ps --no-trunc {self.name}` shows why the new tasks failed",
                rolled_back=True,
            )
        if not result.ok:
            if result.state == "timeout":
                raise self._roll_back_after(client, result.message, progress)
            raise DeployFailed(
                f"the update of service {self.name!r} stopped in state "
                f"{result.state!r}: {result.message}",
                hint=f"inspect it with `docker service ps {self.name}`",
            )
        result = self._wait_for_tasks(client, release.settings.replicas, progress, earlier_tasks)
        if not result.ok:
            raise self._roll_back_after(client, result.message, progress)

    def _roll_back_after(
        self, client: docker.DockerClient, reason: str, progress: Progress
    ) -> DeployFailed:
        """Request a rollback to the previous spec and return the error to raise."""
        progress(f"service {self.name}: {reason}; rolling back")
        earlier = self._request_rollback(client)
        result = self._wait_for_rollout(client, progress, rollback=True, earlier=earlier)
        if result.ok:
            return DeployFailed(
                f"{reason}; service {self.name!r} was rolled back to its previous spec",
                rolled_back=True,
            )
        return DeployFailed(
            f"{reason}; the rollback of service {self.name!r} did not finish: "
            f"{result.state} {result.message}".rstrip(),
            hint=f"inspect it with `docker service ps {self.name}`",
        )

    def _request_rollback(self, client: docker.DockerClient) -> dict[str, Any] | None:
        """Ask Swarm to return to the previous spec, as `docker service rollback` does.

        docker-py 7 cannot send the ``rollback=previous`` parameter of
        ``POST /services/{id}/update``, so this posts the request itself.
        Returns the UpdateStatus from before the request.
        """
        service = _api(client).inspect_service(self.name)
        api = client.api
        url = f"{api.base_url}/v{api.api_version}/services/{service['ID']}/update"
        response = api.post(
            url,
            params={"version": service["Version"]["Index"], "rollback": "previous"},
            json=service["Spec"],
            timeout=ENGINE_TIMEOUT_SECONDS,
        )
        if response.status_code >= 400:
            try:
                message = response.json().get("message", response.text)
            except ValueError:
                message = response.text
            raise DeployFailed(
                f"rollback of service {self.name!r} was rejected: {message}",
                hint=f"roll back by hand with `docker service rollback {self.name}`",
            )
        earlier: dict[str, Any] | None = service.get("UpdateStatus")
        return earlier

    # Waiting

    def _wait_for_rollout(
        self,
        client: docker.DockerClient,
        progress: Progress,
        rollback: bool,
        earlier: Mapping[str, Any] | None,
    ) -> _Rollout:
        """Wait until Swarm finishes the update or rollback it started.

        ``earlier`` is the UpdateStatus from before the request: until Swarm
        replaces it, it describes an older update. ``ok`` is true when the
        wait ended as requested: completed for an update, rollback_completed
        for a rollback.
        """
        deadline = time.monotonic() + self.settings.timeout
        expected = ROLLBACK_DONE if rollback else UPDATE_DONE
        reported: tuple[str, int] | None = None
        while True:
            service = _api(client).inspect_service(self.name)
            status = service.get("UpdateStatus") or {}
            if earlier and status == earlier:
                status = {}
            state = str(status.get("State") or "pending")
            image = _image_of(service["Spec"])
            running = _running_tasks(client, service["ID"], image)
            if (state, len(running)) != reported:
                reported = (state, len(running))
                progress(
                    f"service {self.name}: {state}, {len(running)} of "
                    f"{_replicas(service)} tasks run {_short(image)}"
                )
            if state in FINAL_UPDATE_STATES:
                return _Rollout(state == expected, state, str(status.get("Message") or ""))
            if time.monotonic() > deadline:
                return _Rollout(
                    False,
                    "timeout",
                    f"service {self.name!r} did not converge within "
                    f"{self.settings.timeout:g} s (state {state})",
                )
            time.sleep(POLL_SECONDS)

    def _wait_for_tasks(
        self,
        client: docker.DockerClient,
        replicas: int,
        progress: Progress,
        earlier_tasks: Collection[str] = (),
    ) -> _Rollout:
        """Wait until ``replicas`` tasks run and pass their health check.

        The first task that ends fails the wait, except tasks in
        ``earlier_tasks``: the service's tasks from before the change.
        """
        deadline = time.monotonic() + self.settings.timeout
        reported = -1
        while True:
            tasks = _api(client).tasks(filters={"service": self.name})
            ended = [
                task for task in tasks
                if task["Status"]["State"] in ENDED_TASK_STATES and task["ID"] not in earlier_tasks
            ]
            if ended:
                return _Rollout(False, ended[0]["Status"]["State"], _describe_task(ended[0]))
            running = [
                task for task in tasks
                if task["DesiredState"] == "running" and task["Status"]["State"] == "running"
            ]
            if len(running) != reported:
                reported = len(running)
                progress(f"service {self.name}: {len(running)} of {replicas} tasks running")
            if len(running) >= replicas:
                return _Rollout(True, "running")
            if time.monotonic() > deadline:
                return _Rollout(
                    False,
                    "timeout",
                    f"only {len(running)} of {replicas} tasks were running after "
                    f"{self.settings.timeout:g} s",
                )
            time.sleep(POLL_SECONDS)

    # The public URL

    def _check_url(self, release: Release, progress: Progress, rolls_back: bool) -> None:
        """Request ``url`` + ``health_path`` until it responds with 2xx or 3xx.

        When it still fails after URL_CHECK_SECONDS, raises DeployFailed,
        after rolling an updated service back to its previous spec when
        ``rolls_back`` is set.
        """
        url = _health_url(release)
        if url is None:
            return
        error = _request_until_healthy(url)
        if error is None:
            progress(f"service {self.name}: {url} responds")
            return
        if rolls_back:
            raise self._roll_back_after(self._connect(), error, progress)
        raise DeployFailed(
            error, hint="check the environment's url and the proxy or load balancer in front"
        )

    # Cleanup

    def _prune_secrets(self, client: docker.DockerClient) -> None:
        """Remove this service's secrets that neither its spec nor its previous spec uses.

        The previous spec keeps its secrets so that a rollback can mount them.
        """
        try:
            service = _api(client).inspect_service(self.name)
            specs = [service["Spec"], service.get("PreviousSpec") or {}]
        except docker.errors.NotFound:
            specs = []
        used = {
            secret["SecretName"]
            for spec in specs
            for secret in (
                spec.get("TaskTemplate", {}).get("ContainerSpec", {}).get("Secrets") or []
            )
        }
        labels = [f"{MANAGED_BY_LABEL}={MANAGED_BY}", f"{SERVICE_LABEL}={self.name}"]
        for secret in _api(client).secrets(filters={"label": labels}):
            if secret["Spec"]["Name"] in used:
                continue
            try:
                _api(client).remove_secret(secret["ID"])
            except docker.errors.APIError:
                pass  # still mounted by a task that is shutting down; removed next time

    def _remove_created(self, client: docker.DockerClient, created: _Created, progress: Progress) -> None:
        """Remove what a failed first deploy created, newest first."""
        if created.service is not None:
            try:
                _api(client).remove_service(created.service)
                progress(f"service {self.name}: removed after the failed first deploy")
            except docker.errors.NotFound:
                pass
        if created.proxy:
            proxy.remove(client, self.name)
        # Secrets and the network stay in use until the removed service's
        # tasks have stopped.
        api = _api(client)
        for secret in created.secrets:
            _remove_when_free(lambda: api.remove_secret(secret))
        if created.network is not None:
            network = created.network
            _remove_when_free(lambda: api.remove_network(network))


def _api(client: docker.DockerClient) -> Any:
    """Return the low-level client: types-docker leaves its service, task and
    secret calls untyped, so they are called through Any."""
    return client.api


def _check_digest_reference(image: str) -> None:
    if "@sha256:" not in image:
        raise UsageError(
            f"{image!r} is not a digest reference",
            hint="deploy by digest, as REPOSITORY@sha256:<64 hex digits>",
        )


def _health_url(release: Release) -> str | None:
    url = release.settings.url
    return None if url is None else url + release.settings.health_path


def _image_of(spec: Mapping[str, Any]) -> str:
    return str(spec["TaskTemplate"]["ContainerSpec"]["Image"])


def _replicas(service: Mapping[str, Any]) -> int:
    return int(service["Spec"].get("Mode", {}).get("Replicated", {}).get("Replicas", 0))


def _running_tasks(client: docker.DockerClient, service_id: str, image: str) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = _api(client).tasks(
        filters={"service": service_id, "desired-state": "running"}
    )
    return [
        task for task in tasks
        if task["Status"]["State"] == "running"
        and task["Spec"]["ContainerSpec"]["Image"] == image
    ]


def _failed_task_reason(client: docker.DockerClient, service: str, image: str) -> str | None:
    """Describe a task of ``image`` that ended, or return None."""
    for task in _api(client).tasks(filters={"service": service}):
        if (
            task["Spec"]["ContainerSpec"]["Image"] == image
            and task["Status"]["State"] in ENDED_TASK_STATES
        ):
            return _describe_task(task)
    return None


def _describe_task(task: Mapping[str, Any]) -> str:
    status = task["Status"]
    detail = status.get("Err") or status.get("Message") or ""
    text = f"a new task ended in state {status['State']}"
    if status["State"] == "complete":
        text += " (its container stopped: it failed its health check or its command exited)"
    return f"{text}: {detail}" if detail else text


def _short(image: str) -> str:
    """Shorten a digest reference to 12 hex digits, for progress messages."""
    repository, _, digest = image.partition("@sha256:")
    return f"{repository}@sha256:{digest[:12]}" if digest else image


def _healthcheck(port: int, health_path: str) -> dict[str, Any]:
    return {
        "Test": [
            "CMD",
            "python3",
            "-c",
            HEALTH_SCRIPT.format(timeout=HEALTH_TIMEOUT_SECONDS),
            f"http://127.0.0.1:{port}{health_path}",
        ],
        "Interval": HEALTH_INTERVAL_SECONDS * NANOSECONDS,
        "Timeout": HEALTH_TIMEOUT_SECONDS * NANOSECONDS,
        "Retries": HEALTH_RETRIES,
        "StartPeriod": HEALTH_START_PERIOD_SECONDS * NANOSECONDS,
    }


def _secret_name(service: str, key: str, value: str) -> str:
    """Name a Docker secret after its service, its key and a digest of its value.

    Docker allows 64 characters, so long service names are shortened; the
    digest covers all three parts, so shortened names stay distinct.
    """
    digest = hashlib.sha256(f"{service}\0{key}\0{value}".encode()).hexdigest()[:8]
    prefix = f"{service}-{key}"[: 64 - len(digest) - 1].rstrip("-_.")
    return f"{prefix}-{digest}"


def _find_network(client: docker.DockerClient, name: str) -> dict[str, Any] | None:
    for network in _api(client).networks(names=[name]):
        if network["Name"] == name:
            return dict(network)
    return None


def _remove_when_free(remove: Callable[[], object]) -> None:
    """Call ``remove`` until it succeeds, finds nothing, or REMOVE_WAIT_SECONDS pass."""
    deadline = time.monotonic() + REMOVE_WAIT_SECONDS
    while True:
        try:
            remove()
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError:
            if time.monotonic() > deadline:
                return
            time.sleep(POLL_SECONDS)


def _request_until_healthy(url: str) -> str | None:
    """Request ``url`` until it responds with 2xx or 3xx. Return the last error, else None."""
    deadline = time.monotonic() + URL_CHECK_SECONDS
    while True:
        try:
            with urllib.request.urlopen(url, timeout=URL_REQUEST_TIMEOUT_SECONDS) as response:
                if 200 <= response.status < 400:
                    return None
                error = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            error = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            error = str(getattr(exc, "reason", exc))
        if time.monotonic() > deadline:
            return f"the health check {url} failed for {URL_CHECK_SECONDS} s: {error}"
        time.sleep(1)
