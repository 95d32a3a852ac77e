"""The Docker Engine backend: step containers through the Engine API, image
builds through the docker client with BuildKit.

Files reach a container by ``put_archive`` rather than bind mounts, so the
backend also works with a remote engine (``DOCKER_HOST=tcp://...``, as with
Docker in Docker on GitLab CI) and a step can never change the project tree.
"""

from __future__ import annotations

import codecs
import io
import logging
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections import deque
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import TextIO

import anyio
import docker
import docker.errors
from docker.models.containers import Container

from ..errors import ConfigError, NoEngineError, PublishFailed, StepFailed, UsageError
from ..project import Project
from ..registry import RegistryClient
from ..reports._files import move_into, open_text, private_folder
from ..secrets import Redactor, parse_uri, resolve
from ..spec import (
    OUTPUT_TAIL_CHARS,
    BuildOutput,
    BuildSpec,
    CommandResult,
    ExecResult,
    ImageInput,
    PublishOutput,
    PublishSpec,
    SecretRef,
    StepSpec,
)
from .base import StepOutputCallback
from . import layer_cache
from .docker_archive import prepare_image

log = logging.getLogger(__name__)

RUN_LABEL = "io.rgbridge.pipeline.run"
STEP_LABEL = "io.rgbridge.pipeline.step"
CACHE_LABEL = "io.rgbridge.pipeline.cache"
PROJECT_LABEL = "io.rgbridge.pipeline.project"
CACHE_VOLUME_PREFIX = "rgbridge-pipeline-cache-"
CHUNK = 1024 * 1024
# Docker 23.0 made buildx the client's only BuildKit builder. Older clients
# build with BuildKit themselves when DOCKER_BUILDKIT=1 is set.
FIRST_CLIENT_WITHOUT_BUILTIN_BUILDKIT = (23, 0)
CLIENT_VERSION = re.compile(r"version (\d+)\.(\d+)")
# Every line of BuildKit's plain progress output starts with "#<step> ".
BUILDKIT_PROGRESS = re.compile(r"^#\d+ ", re.MULTILINE)


def connect() -> docker.DockerClient:
    """Connect to the engine named by DOCKER_HOST, or raise NoEngineError."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise NoEngineError(
            f"no Docker Engine answers at {host}: {exc}",
            hint="start one (sudo dockerd, or scripts/setup in this repository) "
            "or point DOCKER_HOST at a running engine",
        ) from None
    return client


def buildkit_command(docker_cli: str) -> list[str]:
    """Return the command that builds with BuildKit, up to its options.

    That is ``docker buildx build --load`` with the buildx plugin, and plain
    ``docker build`` for a client older than 23.0 without it. Raises
    ConfigError when the client is missing or cannot build with BuildKit.
    """
    cli = shutil.which(docker_cli)
    if cli is None:
        raise ConfigError(
            f"docker client not found: {docker_cli!r}",
            hint="install the docker CLI or set docker_cli to its path",
        )
    if _succeeds([cli, "buildx", "version"]):
        return [cli, "buildx", "build", "--load"]
    version = _client_version(cli)
    if version is None or version < FIRST_CLIENT_WITHOUT_BUILTIN_BUILDKIT:
        # An unknown version gets a try. build() then recognizes the error
        # of a client that needs buildx.
        return [cli, "build"]
    raise _missing_buildx(cli)


def _succeeds(command: list[str]) -> bool:
    try:
        completed = subprocess.run(command, capture_output=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return completed.returncode == 0


def _client_version(cli: str) -> tuple[int, int] | None:
    """Return the docker client's version, such as (20, 10), from ``docker --version``."""
    try:
        completed = subprocess.run(
            [cli, "--version"], capture_output=True, text=True, check=False, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = CLIENT_VERSION.search(completed.stdout)
    return (int(match[1]), int(match[2])) if match else None


def _missing_buildx(cli: str) -> ConfigError:
    return ConfigError(
        f"the docker client {cli!r} cannot build with BuildKit: its buildx "
        "component is missing",
        hint="install docker-buildx, or set docker_cli (PIPELINE_DOCKER_CLI) "
        "to a client with built-in BuildKit such as Debian's /usr/bin/docker",
    )


class _Tail:
    """The last ``limit`` characters of a text that arrives in pieces."""

    def __init__(self, limit: int = OUTPUT_TAIL_CHARS) -> None:
        self.limit = limit
        self.truncated = False
        self._pieces: deque[str] = deque()
        self._size = 0

    def append(self, text: str) -> None:
        if not text:
            return
        self._pieces.append(text)
        self._size += len(text)
        while self._size - len(self._pieces[0]) >= self.limit:
            self._size -= len(self._pieces.popleft())
            self.truncated = True

    def text(self) -> str:
        joined = "".join(self._pieces)
        if len(joined) > self.limit:
            self.truncated = True
            return joined[-self.limit:]
        return joined


class _TextStream:
    """One output stream: decoded and redacted across chunk boundaries.

    A UTF-8 character split between two chunks is decoded whole, and the
    last characters, which could be the start of a secret whose end is in
    the next chunk, are held back until that chunk arrives.
    """

    def __init__(self, redactor: Redactor) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._redactor = redactor
        self._held_back = ""
        self.tail = _Tail()

    def feed(self, data: bytes) -> str:
        """Return the text that is ready, redacted, and add it to the tail."""
        return self._release(self._decoder.decode(data), final=False)

    def finish(self) -> str:
        """Return the text held back, at the end of the stream."""
        return self._release(self._decoder.decode(b"", final=True), final=True)

    def _release(self, text: str, final: bool) -> str:
        text = self._redactor(self._held_back + text)
        # An occurrence of a secret that starts before the last
        # (max_length - 1) characters ends within the text, so it has
        # already been replaced.
        held_back = 0 if final else max(self._redactor.max_length - 1, 0)
        cut = max(len(text) - held_back, 0)
        ready, self._held_back = text[:cut], text[cut:]
        self.tail.append(ready)
        return ready


class _OutputLog:
    """Sends output to the step's log file, if any, and to the callback."""

    def __init__(self, file: TextIO | None, on_output: StepOutputCallback) -> None:
        self._file = file
        self._on_output = on_output
        self._at_line_start = True

    def write(self, text: str) -> None:
        if not text:
            return
        if self._file is not None:
            self._file.write(text)
        self._at_line_start = text.endswith("\n")
        self._on_output(text)

    def command(self, command: tuple[str, ...]) -> None:
        if self._file is not None:
            self._file.write(f"$ {shlex.join(command)}\n")
            self._file.flush()
        self._at_line_start = True

    def exit_code(self, exit_code: int) -> None:
        if self._file is not None:
            newline = "" if self._at_line_start else "\n"
            self._file.write(f"{newline}[exit code {exit_code}]\n\n")
            self._file.flush()
        self._at_line_start = True


def _secret_line(value: str) -> str:
    """Drop the line break that ends a secret read from a file."""
    return value.rstrip("\r\n")


@contextmanager
def _log_file(path: Path | None) -> Iterator[TextIO | None]:
    if path is None:
        yield None
        return
    with open_text(path) as file:
        yield file


class DockerBackend:
    name = "docker"

    def __init__(
        self, run_id: str, redactor: Redactor, docker_cli: str = "docker"
    ) -> None:
        self.run_id = run_id
        self.redactor = redactor
        self.docker_cli = docker_cli
        self.client = connect()
        self._lock = threading.Lock()
        self._closed = False
        self._buildkit_command: list[str] | None = None

    # -- checks before a run ------------------------------------------------

    async def preflight(self, steps: Collection[str], image: str | None) -> None:
        """Check the docker client for a build and the image for a scan of --image."""
        await anyio.to_thread.run_sync(self._preflight_sync, tuple(steps), image)

    def _preflight_sync(self, steps: tuple[str, ...], image: str | None) -> None:
        if "build" in steps:
            self._build_prefix()
        if "scan" in steps and "build" not in steps and image is not None:
            try:
                self.client.images.get(image)
            except docker.errors.ImageNotFound:
                raise UsageError(
                    f"image not found in the Docker Engine: {image}",
                    hint="build it first, or pass a local image name or ID to "
                    "--image (docker images lists them)",
                ) from None

    def _build_prefix(self) -> list[str]:
        if self._buildkit_command is None:
            self._buildkit_command = buildkit_command(self.docker_cli)
        return list(self._buildkit_command)

    # -- step containers ---------------------------------------------------

    async def run(
        self, spec: StepSpec, reports_dir: Path, on_output: StepOutputCallback
    ) -> ExecResult:
        return await anyio.to_thread.run_sync(
            self._run_sync, spec, reports_dir, on_output, abandon_on_cancel=True
        )

    def _run_sync(
        self, spec: StepSpec, reports_dir: Path, on_output: StepOutputCallback
    ) -> ExecResult:
        try:
            return self._run_container(spec, reports_dir, on_output)
        except docker.errors.APIError as exc:
            with self._lock:
                if self._closed:  # the run was cancelled and cleaned up
                    raise anyio.get_cancelled_exc_class()() from None
            raise StepFailed(
                f"Docker Engine error in step {spec.name}: {exc.explanation or exc}",
                hint="check the engine's log (for dockerd started by "
                "scripts/setup: /var/log/dockerd.log)",
            ) from None

    def _run_container(
        self, spec: StepSpec, reports_dir: Path, on_output: StepOutputCallback
    ) -> ExecResult:
        """Run the step's commands, streaming their output to ``<step>.log``."""
        self._ensure_image(spec.image)
        reports_dir.mkdir(parents=True, exist_ok=True)
        log_path = reports_dir / f"{spec.name}.log"
        container = self._create(spec)
        try:
            with _log_file(log_path) as file:
                output = _OutputLog(file, on_output)
                self._put_inputs(container, spec)
                container.start()
                for command in spec.setup:
                    result = self._exec(container, spec, command, output)
                    if result.exit_code != 0:
                        return ExecResult((), {}, setup_failed=result, log=log_path)
                results = tuple(
                    self._exec(container, spec, command, output)
                    for command in spec.commands
                )
            outputs = self._copy_outputs(container, spec, reports_dir)
            return ExecResult(results, outputs, log=log_path)
        finally:
            self._remove(container)

    def _ensure_image(self, image: str) -> None:
        try:
            self.client.images.get(image)
            return
        except docker.errors.ImageNotFound:
            pass
        log.info("pulling image %s", image)
        try:
            self.client.images.pull(image)
        except docker.errors.APIError as exc:
            raise StepFailed(
                f"cannot pull image {image}: {exc.explanation or exc}",
                hint="check the image name in the settings, or the registry "
                "mirror of the Docker Engine",
            ) from None

    def _cache_volume(self, key: str) -> str:
        # Creating a volume that exists returns it unchanged, so the volume
        # is created every time. Checking first would race with a removal,
        # after which the container's create would add it without labels.
        name = CACHE_VOLUME_PREFIX + key
        self.client.api.create_volume(name, labels={CACHE_LABEL: key})
        return name

    def _create(self, spec: StepSpec) -> Container:
        volumes = {
            self._cache_volume(cache.key): {"bind": cache.path, "mode": "rw"}
            for cache in spec.caches
        }
        environment = dict(spec.env)
        for mount in spec.secrets:
            if mount.env is not None:
                environment[mount.env] = resolve(mount.secret, self.redactor)
        labels = {RUN_LABEL: self.run_id, STEP_LABEL: spec.name}
        if spec.source is not None:
            labels[PROJECT_LABEL] = str(spec.source.host_path)
        with self._lock:
            if self._closed:
                raise anyio.get_cancelled_exc_class()()
        container = self.client.containers.create(
            spec.image,
            entrypoint=["sleep", "infinity"],
            command=[],
            init=True,
            working_dir=spec.workdir,
            environment=environment,
            volumes=volumes,
            labels=labels,
            network_mode="host" if spec.host_network else None,
            detach=True,
        )
        log.info("created container %s for step %s", container.short_id, spec.name)
        with self._lock:
            closed = self._closed
        if closed:
            self._remove(container)
            raise anyio.get_cancelled_exc_class()()
        return container

    def _put_inputs(self, container: Container, spec: StepSpec) -> None:
        with tempfile.TemporaryFile() as archive:
            with tarfile.open(fileobj=archive, mode="w") as tar:
                if spec.source is not None:
                    project = Project(spec.source.host_path)
                    prefix = spec.source.path.strip("/")
                    for relative in project.iter_files(spec.source.exclude):
                        tar.add(
                            project.path / relative,
                            arcname=f"{prefix}/{relative.as_posix()}",
                            recursive=False,
                        )
                for file in spec.files:
                    # A file mount copies content, so a link is followed.
                    tar.add(file.host_path.resolve(), arcname=file.path.strip("/"))
                for mount in spec.secrets:
                    if mount.path is not None:
                        value = resolve(mount.secret, self.redactor).encode()
                        info = tarfile.TarInfo(mount.path.strip("/"))
                        info.size = len(value)
                        info.mode = 0o400
                        tar.addfile(info, io.BytesIO(value))
                for image in spec.images:
                    self._add_image(tar, image)
            archive.seek(0)
            container.put_archive("/", archive)

    def _add_image(self, tar: tarfile.TarFile, image: ImageInput) -> None:
        try:
            source = self.client.images.get(image.image)
        except docker.errors.ImageNotFound:
            raise StepFailed(
                f"image not found in the Docker Engine: {image.image}",
                hint="build it first, or pass a local image name or ID to --image",
            ) from None
        with tempfile.TemporaryFile() as saved:
            for chunk in source.save(
                chunk_size=CHUNK, named=True
            ):
                saved.write(chunk)
            info = tarfile.TarInfo(image.path.strip("/"))
            info.size = saved.tell()
            saved.seek(0)
            tar.addfile(info, saved)

    def _exec(
        self,
        container: Container,
        spec: StepSpec,
        command: tuple[str, ...],
        output: _OutputLog,
    ) -> CommandResult:
        """Run one command, streaming its output; keep only the end in memory."""
        log.debug("step %s runs %s", spec.name, command)
        api = self.client.api
        exec_id = api.exec_create(container.id, list(command), workdir=spec.workdir)["Id"]
        output.command(command)
        stdout = _TextStream(self.redactor)
        stderr = _TextStream(self.redactor)
        for out, err in api.exec_start(exec_id, stream=True, demux=True, socket=False):
            if out:
                output.write(stdout.feed(out))
            if err:
                output.write(stderr.feed(err))
        output.write(stdout.finish())
        output.write(stderr.finish())
        exit_code = api.exec_inspect(exec_id)["ExitCode"]
        exit_code = -1 if exit_code is None else int(exit_code)
        output.exit_code(exit_code)
        return CommandResult(
            command,
            exit_code,
            stdout.tail.text(),
            stderr.tail.text(),
            truncated=stdout.tail.truncated or stderr.tail.truncated,
        )

    def _copy_outputs(
        self, container: Container, spec: StepSpec, reports_dir: Path
    ) -> dict[str, Path]:
        """Copy the step's output files that are regular files to reports_dir.

        Each is extracted into a private folder first and then moved, so no
        entry of the archive and no link already in reports_dir is followed.
        """
        copied: dict[str, Path] = {}
        with private_folder(reports_dir) as scratch:
            for path in spec.outputs:
                name = PurePosixPath(path).name
                if self._extract_output(container, spec, path, scratch) and move_into(
                    scratch / name, reports_dir / name
                ):
                    copied[path] = reports_dir / name
        return copied

    def _extract_output(
        self, container: Container, spec: StepSpec, path: str, folder: Path
    ) -> bool:
        """Extract the regular file at ``path`` in the container into ``folder``."""
        try:
            stream, _ = container.get_archive(path)
        except docker.errors.NotFound:
            return False
        name = PurePosixPath(path).name
        with tempfile.TemporaryFile() as archive:
            for chunk in stream:
                archive.write(chunk)
            archive.seek(0)
            try:
                with tarfile.open(fileobj=archive) as tar:
                    member = tar.getmember(name)
                    if not member.isreg():
                        log.warning(
                            "step %s: output %s is not a regular file, so it "
                            "is not copied",
                            spec.name,
                            path,
                        )
                        return False
                    tar.extract(member, folder, filter="data")
            except (KeyError, tarfile.TarError) as exc:
                log.warning("step %s: cannot copy output %s: %s", spec.name, path, exc)
                return False
        return True

    def _remove(self, container: Container) -> None:
        try:
            container.remove(force=True, v=True)
            log.debug("removed container %s", container.short_id)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: removal already in progress
                raise

    # -- image builds -------------------------------------------------------

    async def build(self, spec: BuildSpec, on_output: StepOutputCallback) -> BuildOutput:
        """Build with the docker client, streaming its output to spec.log_file."""
        command, env = self._build_command(spec)
        with tempfile.TemporaryDirectory(prefix="pipeline-build-") as scratch:
            iidfile = Path(scratch) / "iid"
            command[command.index("--iidfile") + 1] = str(iidfile)
            log.info("building %s from %s", spec.tags[0], spec.dockerfile)
            text = _TextStream(self.redactor)
            with _log_file(spec.log_file) as file:
                output = _OutputLog(file, on_output)
                output.command(tuple(command))
                async with await anyio.open_process(
                    command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
                ) as process:
                    try:
                        assert process.stdout is not None
                        async for chunk in process.stdout:
                            output.write(text.feed(chunk))
                        output.write(text.finish())
                        exit_code = await process.wait()
                    finally:
                        if process.returncode is None:
                            process.kill()
                            with anyio.CancelScope(shield=True):
                                await process.wait()
                output.exit_code(exit_code)
            image_id = iidfile.read_text().strip() if iidfile.is_file() else None
        log_text = text.tail.text()
        if "buildx component is missing" in log_text:
            raise _missing_buildx(command[0])
        return BuildOutput(
            exit_code,
            log_text,
            image_id,
            spec.tags,
            log_file=spec.log_file,
            builder_started=bool(BUILDKIT_PROGRESS.search(log_text)),
        )

    def _build_command(self, spec: BuildSpec) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ, DOCKER_BUILDKIT="1")
        command = self._build_prefix()
        command += ["--progress=plain", "--iidfile", "", "-f", str(spec.dockerfile)]
        for tag in spec.tags:
            command += ["-t", tag]
        for key, value in spec.labels:
            command += ["--label", f"{key}={value}"]
        for key, value in spec.build_args:
            command += ["--build-arg", f"{key}={value}"]
        if spec.target:
            command += ["--target", spec.target]
        for mount in spec.secrets:
            scheme, location = parse_uri(mount.secret.uri)
            source = f"src={location}" if scheme == "file" else f"env={location}"
            command += ["--secret", f"id={mount.secret.name},{source}"]
        command.append(str(spec.context))
        return command, env

    # -- publishing ---------------------------------------------------------

    async def publish(self, spec: PublishSpec, on_output: StepOutputCallback) -> PublishOutput:
        """Push the image from the engine to the registry, logging to spec.log_file."""
        return await anyio.to_thread.run_sync(
            self._publish_sync, spec, on_output, abandon_on_cancel=True
        )

    def _publish_sync(self, spec: PublishSpec, on_output: StepOutputCallback) -> PublishOutput:
        with _log_file(spec.log_file) as file:
            output = _OutputLog(file, on_output)

            def notify(line: str) -> None:
                output.write(self.redactor(line) + "\n")

            username = spec.username
            if isinstance(username, SecretRef):
                username = _secret_line(resolve(username, self.redactor))
            password = None
            if spec.password is not None:
                password = _secret_line(resolve(spec.password, self.redactor))
            with RegistryClient(
                spec.repository,
                username=username,
                password=password,
                insecure=spec.insecure,
                ca_bundle=spec.ca_bundle,
                attempts=spec.attempts,
                notify=notify,
                password_source=spec.password.uri if spec.password is not None else None,
            ) as registry:
                notify(f"checking access to {registry.url} as {username or 'anonymous'}")
                registry.check_access()
                with tempfile.TemporaryDirectory(prefix="pipeline-publish-") as scratch:
                    archive = self._save_image(spec.image, Path(scratch) / "image.tar")
                    image = prepare_image(
                        archive,
                        Path(scratch),
                        cache=layer_cache.LayerCache(layer_cache.default_path()),
                        registry_has=registry.blob_exists,
                        notify=notify,
                    )
                    notify(f"pushing {spec.image} ({image.digest}) to {spec.repository}")
                    published = registry.push(image, spec.tags)
            notify(f"published {published.reference} as {', '.join(published.tags)}")
            return published

    def _save_image(self, image: str, target: Path) -> Path:
        """Write ``docker save`` of a local image to target."""
        try:
            source = self.client.images.get(image)
        except docker.errors.ImageNotFound:
            raise PublishFailed(
                f"image not found in the Docker Engine: {image}",
                hint="build it first (pipeline publish builds and scans it)",
            ) from None
        try:
            with target.open("wb") as saved:
                for chunk in source.save(chunk_size=CHUNK, named=False):
                    saved.write(chunk)
        except docker.errors.APIError as exc:
            raise PublishFailed(
                f"the Docker Engine could not export image {image}: {exc.explanation or exc}",
                hint="check the engine's log and the free space of the temporary folder",
            ) from None
        return target

    # -- cleanup ------------------------------------------------------------

    async def close(self) -> None:
        with self._lock:
            self._closed = True
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._remove_run_resources)

    def _remove_run_resources(self) -> None:
        # A sparse list reads no container's details, which could fail for a
        # container that a step's own cleanup removed after the list.
        label = f"{RUN_LABEL}={self.run_id}"
        for container in self.client.containers.list(
            all=True, filters={"label": label}, sparse=True
        ):
            self._remove(container)
        for volume in self.client.volumes.list(filters={"label": label}):
            try:
                volume.remove(force=True)
            except docker.errors.NotFound:
                pass
