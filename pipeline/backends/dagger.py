"""The Dagger backend: step descriptions run as Dagger API calls through dagger-io.

``container_for`` and ``image_for`` only chain lazy dagger-io objects and send
nothing, so the queries they lead to can be built through a stand-in
connection and validated against the engine's schema without an engine.
``DaggerBackend`` sends them and turns the responses into the results that
the steps judge.

Where it differs from the Docker Engine backend:

- A command's output arrives when the command has finished, not as a stream.
- The engine caches every exec whose inputs are unchanged, so an unchanged
  step returns its earlier results without running again.
- A step container cannot join the host's network (``StepSpec.host_network``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import dagger

from ..errors import ConfigError, NoEngineError, StepFailed
from ..reports._files import remove
from ..secrets import Redactor, resolve
from ..spec import (
    BuildOutput,
    BuildSpec,
    CommandResult,
    ExecResult,
    SecretRef,
    StepSpec,
)
from . import DAGGER_CLI, DAGGER_CLI_BIN_ENV, DAGGER_SESSION_PORT_ENV, find_dagger
from .base import StepOutputCallback

log = logging.getLogger(__name__)

CACHE_KEY_PREFIX = "rgbridge-pipeline-"
# The name a Dockerfile from outside the build context gets inside it.
OUTSIDE_DOCKERFILE = ".pipeline.Dockerfile"


def dagger_excludes(patterns: Iterable[str]) -> list[str]:
    """Translate gitignore-style patterns into Dagger exclude patterns.

    Dagger (v0.21.8) matches excludes as .dockerignore does, with every
    pattern anchored at the directory's root. In gitignore a pattern with no
    slash before its end matches at any depth, so it gets a ``**/`` prefix.
    """
    excludes = []
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        # NOTE: Dagger has no directory-only patterns, so "build/" also
        # excludes a file named build.
        body = body.rstrip("/")
        if not body:
            continue
        if body.startswith("/"):
            body = body.lstrip("/")
        elif "/" not in body:
            body = f"**/{body}"
        excludes.append(f"!{body}" if negated else body)
    return excludes


@dataclass
class Inputs:
    """The Dagger objects that a spec's host paths, secrets and images become.

    Outside a module every path is read from the client's host. Inside one,
    ``directories`` maps the folder that the module exported its source to
    onto the source ``Directory``, so files are not uploaded a second time.
    ``images`` contains every image that the backend built, by tag.
    """

    client: dagger.Client
    redactor: Redactor
    directories: dict[Path, dagger.Directory] = field(default_factory=dict)
    images: dict[str, dagger.Container] = field(default_factory=dict)

    def directory(
        self, host_path: Path, exclude: Iterable[str] = ()
    ) -> dagger.Directory:
        patterns = dagger_excludes(exclude)
        mapped = self._mapped(host_path)
        if mapped is None:
            return self.client.host().directory(str(host_path), exclude=patterns)
        directory, relative = mapped
        if relative != ".":
            directory = directory.directory(relative)
        return directory.filter(exclude=patterns) if patterns else directory

    def file(self, host_path: Path) -> dagger.File:
        mapped = self._mapped(host_path)
        if mapped is None:
            return self.client.host().file(str(host_path))
        directory, relative = mapped
        return directory.file(relative)

    def secret(self, ref: SecretRef) -> dagger.Secret:
        """Resolve a secret as the Docker backend does and hand it to the engine.

        ``setSecret`` names the secret, which a Dockerfile build needs as the
        mount id, and the engine treats its value as sensitive.
        """
        return self.client.set_secret(ref.name, resolve(ref, self.redactor))

    def image(self, name: str) -> dagger.Container:
        """Return an image built in this run, else the one in the host's image store."""
        built = self.images.get(name)
        if built is not None:
            return built
        return self.client.host().container_image(name)

    def _mapped(self, host_path: Path) -> tuple[dagger.Directory, str] | None:
        for root, directory in self.directories.items():
            if host_path.is_relative_to(root):
                return directory, host_path.relative_to(root).as_posix()
        return None


def container_for(spec: StepSpec, inputs: Inputs) -> dagger.Container:
    """Chain the step's container up to and including its setup commands.

    Nothing is sent to the engine: the result is a lazy chain of API calls.
    """
    if spec.host_network:
        raise ConfigError(
            f"step {spec.name} needs the host's network, which a Dagger "
            "container cannot join",
            hint="use an address that the Dagger engine reaches (for the scan "
            "step, a scan.db_repository that is not on loopback), or run with "
            "--engine docker",
        )
    client = inputs.client
    container = client.container().from_(spec.image).with_workdir(spec.workdir)
    for name, value in spec.env:
        container = container.with_env_variable(name, value)
    for cache in spec.caches:
        volume = client.cache_volume(CACHE_KEY_PREFIX + cache.key)
        container = container.with_mounted_cache(cache.path, volume)
    if spec.source is not None:
        source = inputs.directory(spec.source.host_path, spec.source.exclude)
        container = container.with_directory(spec.source.path, source)
    for file in spec.files:
        container = container.with_file(file.path, inputs.file(file.host_path))
    for image in spec.images:
        tarball = inputs.image(image.image).as_tarball()
        container = container.with_mounted_file(image.path, tarball)
    for mount in spec.secrets:
        if mount.env is None and mount.path is None:
            continue
        secret = inputs.secret(mount.secret)
        if mount.env is not None:
            container = container.with_secret_variable(mount.env, secret)
        if mount.path is not None:
            container = container.with_mounted_secret(mount.path, secret)
    for command in spec.setup:
        container = container.with_exec(list(command))
    return container


def with_command(
    container: dagger.Container, command: tuple[str, ...]
) -> dagger.Container:
    """Add one of a step's commands, which may exit with any code."""
    return container.with_exec(list(command), expect=dagger.ReturnType.ANY)


def image_for(spec: BuildSpec, inputs: Inputs) -> dagger.Container:
    """Chain the image build (Dockerfile, build args, target, secrets, labels).

    The engine (v0.21.8) applies the context's .dockerignore, as ``docker
    build`` does.
    """
    context = inputs.directory(spec.context)
    if spec.dockerfile.is_relative_to(spec.context):
        dockerfile = spec.dockerfile.relative_to(spec.context).as_posix()
    else:
        dockerfile = OUTSIDE_DOCKERFILE
        context = context.with_file(dockerfile, inputs.file(spec.dockerfile))
    container = context.docker_build(
        dockerfile=dockerfile,
        build_args=[
            dagger.BuildArg(name=key, value=value) for key, value in spec.build_args
        ],
        target=spec.target or "",
        secrets=[inputs.secret(mount.secret) for mount in spec.secrets],
    )
    for key, value in spec.labels:
        container = container.with_label(key, value)
    return container


class DaggerBackend:
    """Runs step descriptions on a Dagger engine through a dagger-io client."""

    name = "dagger"

    def __init__(
        self,
        inputs: Inputs,
        on_close: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.inputs = inputs
        self._on_close = on_close

    @property
    def images(self) -> dict[str, dagger.Container]:
        """The images built in this run, by tag."""
        return self.inputs.images

    async def preflight(self, steps: Collection[str], image: str | None) -> None:
        """Check nothing: the engine reports a missing image when a step requests it."""

    async def run(
        self, spec: StepSpec, reports_dir: Path, on_output: StepOutputCallback
    ) -> ExecResult:
        log.info("step %s runs in %s on Dagger", spec.name, spec.image)
        container = container_for(spec, self.inputs)
        try:
            container = await container.sync()
        except dagger.ExecError as exc:
            failed = self._result(
                tuple(exc.command), exc.exit_code, exc.stdout, exc.stderr
            )
            on_output(failed.output)
            return ExecResult((), {}, setup_failed=failed)
        except dagger.QueryError as exc:
            raise StepFailed(
                f"preparing step {spec.name} in {spec.image} failed on Dagger: {exc}",
                hint="check the image name in the settings and the engine's "
                "access to its registry",
            ) from None

        results = []
        for command in spec.commands:
            log.debug("running %s", command)
            ran = with_command(container, command)
            try:
                result = await self._read_result(ran, command)
            except dagger.ExecError as exc:
                # ReturnType.ANY accepts exit codes 0-127 and 192-255 (API
                # v0.21.8), so a command killed by a signal still raises. The
                # next command then starts from the state before this one.
                result = self._result(command, exc.exit_code, exc.stdout, exc.stderr)
            else:
                container = ran
            on_output(result.output)
            results.append(result)
        outputs = await self._export_outputs(container, spec, reports_dir)
        return ExecResult(tuple(results), outputs)

    async def _read_result(
        self, container: dagger.Container, command: tuple[str, ...]
    ) -> CommandResult:
        exit_code = await container.exit_code()
        stdout = await container.stdout()
        stderr = await container.stderr()
        return self._result(command, exit_code, stdout, stderr)

    def _result(
        self, command: tuple[str, ...], exit_code: int, stdout: str, stderr: str
    ) -> CommandResult:
        redact = self.inputs.redactor
        return CommandResult(command, exit_code, redact(stdout), redact(stderr))

    async def _export_outputs(
        self, container: dagger.Container, spec: StepSpec, reports_dir: Path
    ) -> dict[str, Path]:
        copied: dict[str, Path] = {}
        reports_dir.mkdir(parents=True, exist_ok=True)
        for path in spec.outputs:
            target = reports_dir / Path(path).name
            if not await container.exists(
                path, expected_type=dagger.ExistsType.REGULAR_TYPE
            ):
                continue
            # A link that the project placed at the target is removed, so that
            # the export cannot write through it.
            remove(target)
            await container.file(path).export(str(target))
            copied[path] = target
        return copied

    async def build(
        self, spec: BuildSpec, on_output: StepOutputCallback
    ) -> BuildOutput:
        log.info("building %s from %s on Dagger", spec.tags[0], spec.dockerfile)
        container = image_for(spec, self.inputs)
        try:
            container = await container.sync()
            image_id = await container.as_tarball().digest()
        except dagger.ExecError as exc:
            return self._failed_build(
                spec, exc.exit_code, str(exc), exc.stdout + exc.stderr, on_output
            )
        except dagger.QueryError as exc:
            return self._failed_build(spec, 1, str(exc), "", on_output)

        for tag in spec.tags:
            self.inputs.images[tag] = container
        text = f"built {spec.tags[0]} on Dagger; image tarball digest {image_id}\n"
        on_output(text)
        return BuildOutput(0, text, image_id, spec.tags)

    def _failed_build(
        self,
        spec: BuildSpec,
        exit_code: int,
        message: str,
        output: str,
        on_output: StepOutputCallback,
    ) -> BuildOutput:
        # The build step reads the last "ERROR: " line as the failure's message.
        text = self.inputs.redactor(
            f"{output.rstrip()}\nERROR: {message.strip()}\n".lstrip()
        )
        on_output(text)
        return BuildOutput(exit_code or 1, text, None, spec.tags)

    async def close(self) -> None:
        if self._on_close is not None:
            with anyio.CancelScope(shield=True):
                await self._on_close()


async def connect(run_id: str, redactor: Redactor) -> DaggerBackend:
    """Open a Dagger client for one run, or raise NoEngineError.

    An open session (``DAGGER_SESSION_PORT``) is used as it is. Otherwise the
    ``dagger`` CLI on PATH starts one. dagger-io would download a CLI when it
    finds neither, so that case is rejected here first.
    """
    endpoint = find_dagger()
    if endpoint is None:
        raise NoEngineError(
            f"no Dagger engine: {DAGGER_SESSION_PORT_ENV} is not set and no "
            f"{DAGGER_CLI} CLI is on PATH",
            hint="install the Dagger CLI, run the pipeline under `dagger run`, "
            "or use --engine docker",
        )
    log.info("run %s connects to %s", run_id, endpoint.describe())
    stack = contextlib.AsyncExitStack()
    try:
        with _cli_bin(endpoint.cli):
            client = await stack.enter_async_context(dagger.Connection(dagger.Config()))
    except (dagger.DaggerError, OSError) as exc:
        await stack.aclose()
        if endpoint.session_port is not None:
            hint = (
                f"check that the session on port {endpoint.session_port} is still "
                "open (it ends with its `dagger run`), or unset "
                + DAGGER_SESSION_PORT_ENV
            )
        else:
            hint = (
                f"check that `{endpoint.cli} core version` works; the engine runs "
                "as a container and its image must be available"
            )
        raise NoEngineError(
            f"connecting to {endpoint.describe()} failed: {exc}",
            hint=hint + ", or use --engine docker",
        ) from None
    return DaggerBackend(Inputs(client, redactor), on_close=stack.aclose)


@contextlib.contextmanager
def _cli_bin(cli: str | None) -> Iterator[None]:
    """Point dagger-io at ``cli`` while it provisions, so it downloads nothing."""
    if cli is None or os.environ.get(DAGGER_CLI_BIN_ENV) == cli:
        yield
        return
    previous = os.environ.get(DAGGER_CLI_BIN_ENV)
    os.environ[DAGGER_CLI_BIN_ENV] = cli
    try:
        yield
    finally:
        if previous is None:
            del os.environ[DAGGER_CLI_BIN_ENV]
        else:
            os.environ[DAGGER_CLI_BIN_ENV] = previous
