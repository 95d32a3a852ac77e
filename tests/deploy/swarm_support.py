"""Helpers of the Swarm deploy tests: the sample service, a target with its
settings, a poller that requests a URL while a rollout runs, and cleanup."""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

import docker
import docker.errors

from conftest import REGISTRY
from pipeline.config import EnvironmentSettings, RegistrySettings, SwarmSettings
from pipeline.deploy.base import Release
from pipeline.deploy.proxy import SERVICE_LABEL, proxy_name
from pipeline.deploy.swarm import SwarmTarget

# One repository per test session: sessions that run at once would otherwise
# delete the manifests that the other one still deploys.
REPOSITORY = f"{REGISTRY}/rgbridge-swarm-test/app-{os.getpid()}"
PROXY_IMAGE = "haproxy:2.6"
# Short rollout timings, so that a rollout of two tasks takes seconds.
UPDATE_DELAY = 0.5
MONITOR = 2.0
TIMEOUT = 120.0

# A service that returns its version for / and 200 for /health. Version
# "bad" fails its health check. Version "edge" passes it only for requests
# from inside its container, like a service behind a wrong firewall rule, so
# its tasks become healthy but the public URL fails.
APP = '''\
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = os.environ["APP_VERSION"]


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            healthy = VERSION != "bad"
            if VERSION == "edge":
                healthy = self.client_address[0] == "127.0.0.1"
            self.reply(200 if healthy else 500, "ok" if healthy else "unhealthy")
        else:
            self.reply(200, f"version {VERSION}")

    def reply(self, status, text):
        body = (text + "\\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


server = ThreadingHTTPServer(("", 8080), Handler)
# PID 1 ignores SIGTERM unless it handles it, so stop on it explicitly.
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
server.serve_forever()
server.server_close()
'''

DOCKERFILE = '''\
FROM python:3.11-slim
COPY app.py /app.py
ENV APP_VERSION={version}
CMD ["python3", "/app.py"]
'''

VERSIONS = ("v1", "v2", "bad", "edge")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Deployment:
    """One test's service: its target, settings and the progress messages."""

    name: str
    port: int
    target: SwarmTarget
    settings: EnvironmentSettings
    messages: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def release(
        self, image: str, secret_values: dict[str, str] | None = None, **changes: object
    ) -> Release:
        """A release of ``image``; ``changes`` replace environment settings."""
        settings = self.settings.model_copy(update=changes) if changes else self.settings
        return Release(
            environment="test",
            settings=settings,
            name=self.name,
            image=image,
            secrets=secret_values or {},
        )

    def progress(self, message: str) -> None:
        self.messages.append(message)


DeploymentFactory = Callable[..., Deployment]


def environment_settings(port: int, **target: object) -> EnvironmentSettings:
    swarm = SwarmSettings.model_validate(
        {
            "kind": "swarm",
            "publish": "proxy",
            "published_port": port,
            "update_delay": UPDATE_DELAY,
            "monitor": MONITOR,
            "timeout": TIMEOUT,
            **target,
        }
    )
    return EnvironmentSettings(
        registry=RegistrySettings(repository=REPOSITORY),
        target=swarm,
        replicas=2,
        url=f"http://127.0.0.1:{port}",
    )


def remove_service_resources(client: docker.DockerClient, name: str) -> None:
    """Remove a test service, its proxy, secrets and network, whether the target made them or not."""
    try:
        client.api.remove_service(name)
    except docker.errors.NotFound:
        pass
    try:
        client.containers.get(proxy_name(name)).remove(force=True)
    except docker.errors.NotFound:
        pass
    # Secrets and the network stay in use until the service's tasks are gone.
    deadline = time.monotonic() + 60
    task_label = f"com.docker.swarm.service.name={name}"
    # The low-level list, because the high-level one inspects each container
    # and fails when Swarm removes one meanwhile.
    while client.api.containers(all=True, filters={"label": task_label}):
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    while time.monotonic() < deadline:
        leftovers = 0
        for secret in client.secrets.list(filters={"label": f"{SERVICE_LABEL}={name}"}):
            leftovers += _try_remove(secret.remove)
        for network in client.networks.list(names=[f"{name}-net"]):
            if network.name == f"{name}-net":
                leftovers += _try_remove(network.remove)
        if not leftovers:
            return
        time.sleep(1)


def _try_remove(remove: Callable[[], object]) -> int:
    try:
        remove()
    except docker.errors.NotFound:
        return 0
    except docker.errors.APIError:
        return 1
    return 0


def managed_resources(client: docker.DockerClient, name: str, settle: bool = False) -> list[str]:
    """Every service, container, secret and network the pipeline made for ``name``.

    Swarm removes networks in the background, so with ``settle`` the list is
    taken again until it is empty or 10 s have passed.
    """
    deadline = time.monotonic() + (10 if settle else 0)
    while True:
        found = _managed_resources(client, name)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def _managed_resources(client: docker.DockerClient, name: str) -> list[str]:
    label = f"{SERVICE_LABEL}={name}"
    found = [s.name for s in client.services.list(filters={"name": name}) if s.name == name]
    found += [c["Names"][0].lstrip("/") for c in client.api.containers(all=True, filters={"label": label})]
    found += [s.name for s in client.secrets.list(filters={"label": label})]
    found += [n.name for n in client.networks.list(filters={"label": label})]
    return [str(item) for item in found]


@dataclass
class Poller:
    """Requests a URL every ``interval`` seconds in a thread and keeps every result."""

    url: str
    interval: float = 0.05
    results: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Poller:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[tuple[float, str]]:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=10)
        return self.results

    def _run(self) -> None:
        while not self._stop.is_set():
            self.results.append((time.monotonic(), request_text(self.url)))
            time.sleep(self.interval)

    @property
    def failures(self) -> list[str]:
        return [text for _, text in self.results if not text.startswith("version ")]

    @property
    def versions(self) -> list[str]:
        return [text.removeprefix("version ") for _, text in self.results if text.startswith("version ")]


def request_text(url: str) -> str:
    """Return the body of a GET, or a line that describes the failure."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode().strip())
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"error {exc}"
