"""The reverse proxy in front of a Swarm service that has no routing mesh.

Without IPVS a swarm cannot balance over virtual IPs, so a port the service
publishes does not respond. The service then runs with endpoint mode dnsrr on
an attachable overlay network, and an HAProxy container on that network
publishes the port and spreads requests over ``tasks.<service>``.
"""

from __future__ import annotations

import hashlib
import io
import re
import string
import tarfile
import time
from dataclasses import dataclass
from importlib import resources

import docker
import docker.errors
from docker.models.containers import Container

from ..errors import UsageError
from .base import Progress

MANAGED_BY_LABEL = "io.rgbridge.pipeline.managed-by"
MANAGED_BY = "rgbridge-pipeline"
SERVICE_LABEL = "io.rgbridge.pipeline.service"
ENVIRONMENT_LABEL = "io.rgbridge.pipeline.environment"
# A digest of the settings fixed when the container is created: image,
# network and published address. A change of them means a new container.
CONTAINER_LABEL = "io.rgbridge.pipeline.proxy-container"

CONFIG_DIR = "/usr/local/etc/haproxy"
CONFIG_FILE = "haproxy.cfg"
# Folder and file of a new config while `haproxy -c` checks it, before it replaces the old one.
CANDIDATE_DIR = "/tmp"
CANDIDATE_FILE = "haproxy-candidate.cfg"
# Port HAProxy listens on inside its container. It is above 1024 because
# the official image runs HAProxy as an unprivileged user.
LISTEN_PORT = 8080
MIN_SERVER_SLOTS = 10
# Seconds a new proxy must keep running before it counts as started.
START_CHECK_SECONDS = 1.0
STOP_TIMEOUT_SECONDS = 10
RELOAD_TIMEOUT_SECONDS = 10
# Health paths are written into the HAProxy config unquoted, so they are
# limited to characters that HAProxy reads literally there.
HEALTH_PATH_FOR_PROXY = re.compile(r"/[A-Za-z0-9._~/%?=&:+,;@!*()-]*")


def proxy_name(service: str) -> str:
    return f"{service}-proxy"


def next_proxy_name(service: str) -> str:
    """Name a replacement proxy while it starts next to the one it replaces."""
    return f"{service}-proxy-next"


@dataclass(frozen=True)
class ProxySpec:
    """Everything the proxy container of one service is made of."""

    service: str
    environment: str
    network: str
    image: str
    bind: str
    published_port: int
    port: int
    health_path: str
    replicas: int

    @property
    def name(self) -> str:
        return proxy_name(self.service)

    @property
    def slots(self) -> int:
        """Server slots: room for every task during a start-first rollout."""
        return max(MIN_SERVER_SLOTS, 2 * self.replicas)

    def check(self) -> None:
        """Raise UsageError when the health path cannot go into the config."""
        if not HEALTH_PATH_FOR_PROXY.fullmatch(self.health_path):
            raise UsageError(
                f"health_path {self.health_path!r} contains characters the "
                "HAProxy configuration cannot take unquoted",
                hint="use letters, digits and / . _ ~ % ? = & : + , ; @ ! * ( ) - "
                "in health_path, or publish through the routing mesh",
            )

    def config(self) -> str:
        template = resources.files("pipeline").joinpath("deploy", "haproxy.cfg").read_text()
        return string.Template(template).substitute(
            service=self.service,
            environment=self.environment,
            listen_port=LISTEN_PORT,
            health_path=self.health_path,
            slots=self.slots,
            port=self.port,
        )

    def container_fingerprint(self) -> str:
        """Return a digest of the settings that only a new container can change."""
        parts = [self.image, self.network, self.bind, str(self.published_port)]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def find(client: docker.DockerClient, service: str) -> Container | None:
    """Return the proxy container of ``service``, or None.

    Raises UsageError when a container of that name exists that the pipeline
    did not create.
    """
    return _find_named(client, proxy_name(service), service)


def _find_named(client: docker.DockerClient, name: str, service: str) -> Container | None:
    try:
        container = client.containers.get(name)
    except docker.errors.NotFound:
        return None
    labels = container.labels
    if labels.get(MANAGED_BY_LABEL) != MANAGED_BY or labels.get(SERVICE_LABEL) != service:
        raise UsageError(
            f"a container named {name!r} exists that the pipeline did not create "
            f"as the proxy of service {service!r}",
            hint=f"remove or rename that container (docker rm -f {name}), or "
            "choose another service name",
        )
    return container


@dataclass
class Staged:
    """A new proxy container that runs under a temporary name next to the old one."""

    client: docker.DockerClient
    container: Container
    old: Container
    spec: ProxySpec


def ensure(
    client: docker.DockerClient, spec: ProxySpec, progress: Progress
) -> str:
    """Create, keep, reload or replace the proxy so that it matches ``spec``.

    Returns "created", "unchanged", "reloaded" or "recreated". A changed
    config is reloaded in the running container, which keeps serving. A
    changed image, network or published address needs a new container. On a
    new address the old container keeps running until the new one has
    started. On the same address it stops first and starts again when the
    new one fails. Either way requests fail while ``_put_in_place`` renames
    the new container.
    """
    spec.check()
    fingerprint = spec.container_fingerprint()
    current = find(client, spec.service)
    if current is not None and current.labels.get(CONTAINER_LABEL) == fingerprint:
        if current.status != "running":
            current.start()
            progress(f"proxy {spec.name}: started again")
        if _read_config(current) == spec.config():
            return "unchanged"
        _reload(current, spec)
        progress(f"proxy {spec.name}: configuration reloaded")
        return "reloaded"
    if current is None:
        _pull(client, spec.image)
        _create(client, spec, fingerprint, spec.name)
    elif _published_address(current) != (spec.bind, spec.published_port):
        staged = stage(client, spec, progress)
        assert staged is not None, "stage() returns None only for the same published address"
        _put_in_place(staged)
    else:
        progress(f"proxy {spec.name}: image or network changed, replacing the container")
        _pull(client, spec.image)
        # The new container needs the published port, so the old one stops first.
        current.stop(timeout=STOP_TIMEOUT_SECONDS)
        try:
            staged = _start_next(client, spec, fingerprint, current)
        except BaseException:
            current.start()
            progress(f"proxy {spec.name}: the old container serves again")
            raise
        _put_in_place(staged)
    progress(
        f"proxy {spec.name}: serving on {spec.bind}:{spec.published_port} "
        f"({spec.image}, network {spec.network})"
    )
    return "created" if current is None else "recreated"


def stage(client: docker.DockerClient, spec: ProxySpec, progress: Progress) -> Staged | None:
    """Start the new proxy next to the old one when the published address changes.

    Both then serve, each on its own address, until ``commit`` removes the
    old one or ``discard`` the new one. Returns None, and changes nothing,
    when there is no proxy yet or the published address stays: ``ensure``
    handles those. Raises UsageError, with the old proxy untouched, when the
    new one cannot start, for example because its port is in use.
    """
    spec.check()
    current = find(client, spec.service)
    if current is None:
        return None
    old_address = _published_address(current)
    if old_address == (spec.bind, spec.published_port):
        return None
    old = "nothing" if old_address is None else f"{old_address[0]}:{old_address[1]}"
    progress(f"proxy {spec.name}: published address changes from {old}, starting a new container next to the old one")
    _pull(client, spec.image)
    try:
        staged = _start_next(client, spec, spec.container_fingerprint(), current)
    except UsageError as exc:
        raise UsageError(
            f"{exc.message}. Nothing was changed: the old proxy still serves {old} "
            "and the service keeps its spec",
            hint=exc.hint,
        ) from None
    progress(f"proxy {spec.name}: new container serves on {spec.bind}:{spec.published_port}")
    return staged


def commit(staged: Staged, progress: Progress) -> None:
    """Remove the old proxy and give the staged one its name."""
    _put_in_place(staged)
    spec = staged.spec
    progress(
        f"proxy {spec.name}: serving on {spec.bind}:{spec.published_port} "
        f"({spec.image}, network {spec.network})"
    )


def discard(staged: Staged) -> None:
    """Remove the staged proxy; the old one has kept serving."""
    try:
        staged.container.remove(force=True)
    except docker.errors.NotFound:
        pass


def _start_next(
    client: docker.DockerClient, spec: ProxySpec, fingerprint: str, old: Container
) -> Staged:
    """Create and start the new proxy under its temporary name."""
    name = next_proxy_name(spec.service)
    leftover = _find_named(client, name, spec.service)
    if leftover is not None:
        # An earlier deploy stopped between starting this container and renaming it.
        leftover.remove(force=True)
    container = _create(client, spec, fingerprint, name)
    return Staged(client, container, old, spec)


def _put_in_place(staged: Staged) -> None:
    """Replace the old proxy by the staged one, under the proxy's name.

    dockerd 20.10 cannot rename a running container on an overlay network
    (it fails to register the endpoint under the new name again), so both
    containers stop for the renames. Requests fail until the new one runs.
    When it does not start again, the old one returns.
    """
    new, old, spec = staged.container, staged.old, staged.spec
    aside = f"{spec.name}-old"
    leftover = _find_named(staged.client, aside, spec.service)
    if leftover is not None:
        leftover.remove(force=True)
    new.stop(timeout=STOP_TIMEOUT_SECONDS)
    old.stop(timeout=STOP_TIMEOUT_SECONDS)
    old.rename(aside)
    new.rename(spec.name)
    try:
        _start(new, spec)
    except BaseException:
        new.remove(force=True)
        old.rename(spec.name)
        old.start()
        raise
    old.remove(force=True)


def _published_address(container: Container) -> tuple[str, int] | None:
    """Return the host address and port the proxy container publishes."""
    bindings = (container.attrs.get("HostConfig") or {}).get("PortBindings") or {}
    for binding in bindings.get(f"{LISTEN_PORT}/tcp") or []:
        return str(binding.get("HostIp") or ""), int(binding.get("HostPort") or 0)
    return None


def remove(client: docker.DockerClient, service: str) -> bool:
    """Remove the proxy of ``service``; False when there was none."""
    container = find(client, service)
    if container is None:
        return False
    container.remove(force=True)
    return True


def _pull(client: docker.DockerClient, image: str) -> None:
    try:
        client.images.get(image)
        return
    except docker.errors.ImageNotFound:
        pass
    try:
        client.images.pull(image)
    except docker.errors.APIError as exc:
        raise UsageError(
            f"cannot pull the proxy image {image!r}: {exc.explanation or exc}",
            hint="set proxy_image to an HAProxy 2.x image the engine can pull "
            "(scripts/setup provides haproxy:2.6 through the local mirror)",
        ) from None


def _create(client: docker.DockerClient, spec: ProxySpec, fingerprint: str, name: str) -> Container:
    """Create and start the proxy container; on failure leave no container behind."""
    container = client.containers.create(
        spec.image,
        command=["haproxy", "-W", "-db", "-f", f"{CONFIG_DIR}/{CONFIG_FILE}"],
        name=name,
        labels={
            MANAGED_BY_LABEL: MANAGED_BY,
            SERVICE_LABEL: spec.service,
            ENVIRONMENT_LABEL: spec.environment,
            CONTAINER_LABEL: fingerprint,
        },
        network=spec.network,
        ports={f"{LISTEN_PORT}/tcp": (spec.bind, spec.published_port)},
        restart_policy={"Name": "always"},
        # HAProxy finishes the requests in progress on SIGUSR1.
        stop_signal="SIGUSR1",
    )
    try:
        try:
            container.put_archive(CONFIG_DIR, _config_archive(spec.config()))
        except docker.errors.NotFound:
            raise UsageError(
                f"the proxy image {spec.image!r} has no folder {CONFIG_DIR}, so it "
                "cannot take the HAProxy configuration",
                hint="set proxy_image to an HAProxy 2.x image, such as haproxy:2.6",
            ) from None
        _start(container, spec)
    except BaseException:
        container.remove(force=True)
        raise
    return container


def _start(container: Container, spec: ProxySpec) -> None:
    """Start the proxy container and raise UsageError when it does not keep running."""
    try:
        container.start()
    except docker.errors.APIError as exc:
        reason = str(exc.explanation or exc)
        if "address already in use" in reason or "port is already allocated" in reason:
            reason = "the address is already in use"
        raise UsageError(
            f"the proxy {spec.name!r} cannot publish "
            f"{spec.bind}:{spec.published_port}: {reason}",
            hint=f"set published_port to a free port, or stop what listens on "
            f"{spec.bind}:{spec.published_port}",
        ) from None
    time.sleep(START_CHECK_SECONDS)
    container.reload()
    if container.status != "running":
        logs = container.logs(tail=20).decode(errors="replace")
        raise UsageError(
            f"the proxy {spec.name!r} ({spec.image}) exited at start:\n{logs}",
            hint="check that proxy_image is HAProxy 2.x",
        )


def _read_config(container: Container) -> str | None:
    """Return the config file in the container, None when it cannot be read."""
    try:
        chunks, _ = container.get_archive(f"{CONFIG_DIR}/{CONFIG_FILE}")
    except docker.errors.APIError:
        return None
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as archive:
        member = archive.extractfile(CONFIG_FILE)
        return None if member is None else member.read().decode(errors="replace")


def _reload(container: Container, spec: ProxySpec) -> None:
    """Check the new config, put it in place and make HAProxy load it.

    In master-worker mode (``-W``) HAProxy reloads on SIGUSR2: the master
    starts new workers with the new config and passes them the listening
    sockets, and the old workers finish their requests. The master logs
    "Loading success." or "Loading failure!" after each reload.
    """
    config = spec.config()
    container.put_archive(CANDIDATE_DIR, _config_archive(config, CANDIDATE_FILE))
    check = container.exec_run(["haproxy", "-c", "-f", f"{CANDIDATE_DIR}/{CANDIDATE_FILE}"])
    if check.exit_code != 0:
        raw = check.output if isinstance(check.output, bytes) else b"".join(check.output)
        output = raw.decode(errors="replace")[-2000:]
        raise UsageError(
            f"the new configuration of proxy {spec.name!r} is invalid, so the old one stays:\n{output}",
            hint="check health_path and port of the environment",
        )
    reloads_before = _reload_count(container)
    container.put_archive(CONFIG_DIR, _config_archive(config))
    container.kill(signal="SIGUSR2")
    deadline = time.monotonic() + RELOAD_TIMEOUT_SECONDS
    while True:
        logs = _logs(container)
        if logs.count("Reloading HAProxy") > reloads_before:
            outcome = logs.rsplit("Reloading HAProxy", 1)[1]
            if "Loading success." in outcome:
                return
            if "Loading failure" in outcome:
                raise UsageError(
                    f"proxy {spec.name!r} failed to load its new configuration and "
                    f"keeps the old one:\n{outcome[-2000:]}",
                    hint=f"see `docker logs {spec.name}`",
                )
        if time.monotonic() > deadline:
            raise UsageError(
                f"proxy {spec.name!r} did not confirm the reload within "
                f"{RELOAD_TIMEOUT_SECONDS} s",
                hint=f"see `docker logs {spec.name}`",
            )
        time.sleep(0.2)


def _reload_count(container: Container) -> int:
    return _logs(container).count("Reloading HAProxy")


def _logs(container: Container) -> str:
    output = container.logs()
    if not isinstance(output, bytes):
        output = b"".join(output)
    return output.decode(errors="replace")


def _config_archive(config: str, name: str = CONFIG_FILE) -> bytes:
    data = config.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        info.mtime = int(time.time())
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
