"""The Docker Engine backend: step containers through the Engine API, image
builds through the docker client with BuildKit.

Files reach a container by ``put_archive`` rather than bind mounts, so the
backend also works with a remote engine (``DOCKER_HOST=tcp://...``, as with
Docker in Docker on GitLab CI) and a step can never change the project tree.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import Any

import anyio
import docker
import docker.errors
from docker.models.containers import Container

from ..errors import ConfigError, NoEngineError, StepFailed
from ..project import Project
from ..secrets import Redactor, parse_uri, resolve
from ..spec import (
    BuildOutput,
    BuildSpec,
    CommandResult,
    ExecResult,
    ImageInput,
    StepSpec,
)
from .base import StepOutputCallback

log = logging.getLogger(__name__)

RUN_LABEL = "io.rgbridge.pipeline.run"
STEP_LABEL = "io.rgbridge.pipeline.step"
CACHE_LABEL = "io.rgbridge.pipeline.cache"
PROJECT_LABEL = "io.rgbridge.pipeline.project"
CACHE_VOLUME_PREFIX = "rgbridge-pipeline-cache-"
CHUNK = 1024 * 1024


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
        self._ensure_image(spec.image)
        container = self._create(spec)
        try:
            self._put_inputs(container, spec)
            container.start()
            for command in spec.setup:
                result = self._exec(container, spec, command, on_output)
                if result.exit_code != 0:
                    return ExecResult((), {}, setup_failed=result)
            results = tuple(
                self._exec(container, spec, command, on_output)
                for command in spec.commands
            )
            outputs = self._copy_outputs(container, spec, reports_dir)
            return ExecResult(results, outputs)
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
        name = CACHE_VOLUME_PREFIX + key
        try:
            self.client.volumes.get(name)
        except docker.errors.NotFound:
            self.client.volumes.create(name, labels={CACHE_LABEL: key})
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
                    tar.add(file.host_path, arcname=file.path.strip("/"))
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
        on_output: StepOutputCallback,
    ) -> CommandResult:
        log.debug("step %s runs %s", spec.name, command)
        api = self.client.api
        exec_id = api.exec_create(container.id, list(command), workdir=spec.workdir)["Id"]
        stdout: list[str] = []
        stderr: list[str] = []
        for out, err in api.exec_start(exec_id, stream=True, demux=True, socket=False):
            for data, sink in ((out, stdout), (err, stderr)):
                if data:
                    text = self.redactor(data.decode("utf-8", errors="replace"))
                    sink.append(text)
                    on_output(text)
        exit_code = api.exec_inspect(exec_id)["ExitCode"]
        return CommandResult(
            command,
            -1 if exit_code is None else int(exit_code),
            "".join(stdout),
            "".join(stderr),
        )

    def _copy_outputs(
        self, container: Container, spec: StepSpec, reports_dir: Path
    ) -> dict[str, Path]:
        copied: dict[str, Path] = {}
        reports_dir.mkdir(parents=True, exist_ok=True)
        for path in spec.outputs:
            try:
                stream, _ = container.get_archive(path)
            except docker.errors.NotFound:
                continue
            with tempfile.TemporaryFile() as archive:
                for chunk in stream:
                    archive.write(chunk)
                archive.seek(0)
                with tarfile.open(fileobj=archive) as tar:
                    tar.extractall(reports_dir, filter="data")
            copied[path] = reports_dir / Path(path).name
        return copied

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
        command, env = self._build_command(spec)
        with tempfile.TemporaryDirectory(prefix="pipeline-build-") as scratch:
            iidfile = Path(scratch) / "iid"
            command[command.index("--iidfile") + 1] = str(iidfile)
            log.info("building %s from %s", spec.tags[0], spec.dockerfile)
            lines: list[str] = []
            async with await anyio.open_process(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
            ) as process:
                try:
                    assert process.stdout is not None
                    async for text in _lines(process.stdout):
                        text = self.redactor(text)
                        lines.append(text)
                        on_output(text)
                    exit_code = await process.wait()
                finally:
                    if process.returncode is None:
                        process.kill()
                        with anyio.CancelScope(shield=True):
                            await process.wait()
            image_id = iidfile.read_text().strip() if iidfile.is_file() else None
        log_text = "".join(lines)
        if "buildx component is missing" in log_text:
            raise ConfigError(
                f"the docker client {self.docker_cli!r} cannot build with "
                "BuildKit: its buildx component is missing",
                hint="install docker-buildx, or set docker_cli "
                "(PIPELINE_DOCKER_CLI) to a client with built-in BuildKit such "
                "as Debian's /usr/bin/docker",
            )
        return BuildOutput(exit_code, log_text, image_id, spec.tags)

    def _build_command(self, spec: BuildSpec) -> tuple[list[str], dict[str, str]]:
        cli = shutil.which(self.docker_cli)
        if cli is None:
            raise ConfigError(
                f"docker client not found: {self.docker_cli!r}",
                hint="install the docker CLI or set docker_cli to its path",
            )
        env = dict(os.environ, DOCKER_BUILDKIT="1")
        has_buildx = (
            subprocess.run(
                [cli, "buildx", "version"], capture_output=True, check=False
            ).returncode
            == 0
        )
        command = [cli, "buildx", "build", "--load"] if has_buildx else [cli, "build"]
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

    # -- cleanup ------------------------------------------------------------

    async def close(self) -> None:
        with self._lock:
            self._closed = True
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._remove_run_resources)

    def _remove_run_resources(self) -> None:
        label = f"{RUN_LABEL}={self.run_id}"
        for container in self.client.containers.list(
            all=True, filters={"label": label}
        ):
            self._remove(container)
        for volume in self.client.volumes.list(filters={"label": label}):
            try:
                volume.remove(force=True)
            except docker.errors.NotFound:
                pass


async def _lines(stream: Any) -> Any:
    """Yield decoded lines from an anyio byte stream."""
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line.decode("utf-8", errors="replace") + "\n"
    if buffer:
        yield buffer.decode("utf-8", errors="replace")
