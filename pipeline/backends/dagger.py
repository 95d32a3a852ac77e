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
- A publish pushes each tag with ``Container.publish``, the first one being
  the full commit, because the API has no push by digest and no credential
  check that pushes nothing. Credentials are checked by that first push.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import dagger
import docker.auth
import tenacity

from ..errors import ConfigError, NoEngineError, PublishFailed, StepFailed
from ..reports._files import remove, write_text
from ..secrets import Redactor, resolve
from ..spec import (
    BuildOutput,
    BuildSpec,
    CommandResult,
    ExecResult,
    PublishOutput,
    PublishSpec,
    SecretRef,
    StepSpec,
)
from . import DAGGER_CLI, DAGGER_CLI_BIN_ENV, DAGGER_SESSION_PORT_ENV, find_dagger
from .base import StepOutputCallback

log = logging.getLogger(__name__)

CACHE_KEY_PREFIX = "rgbridge-pipeline-"
# The name a Dockerfile from outside the build context gets inside it.
OUTSIDE_DOCKERFILE = ".pipeline.Dockerfile"
# Container.publish returns the address it pushed with the digest appended.
PUBLISHED_DIGEST = re.compile(r"@(?P<digest>sha256:[0-9a-f]{64})$")
# Registry failures worth another attempt: 5xx responses and dropped
# connections. An unreachable registry (connection refused) is not one.
TRANSIENT_PUSH_ERROR = re.compile(
    r"\b50[0234]\b|Internal Server Error|Bad Gateway|Service Unavailable|"
    r"Gateway Time-?out|connection reset|unexpected EOF|TLS handshake timeout",
    re.IGNORECASE,
)
AUTH_PUSH_ERROR = re.compile(
    r"\b40[13]\b|unauthorized|authentication required|denied|forbidden", re.IGNORECASE
)
# Seconds before the second attempt of a push; each later wait doubles.
PUSH_RETRY_DELAY = 1.0
PUSH_RETRY_MAX_DELAY = 30.0


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
    # Secrets that the caller handed over as Dagger secrets, by the reference
    # (env://NAME, file://PATH) that they stand for. The module's functions
    # fill it, because the caller's variables and files never reach them.
    secrets: dict[str, dagger.Secret] = field(default_factory=dict)

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
        mount id, and the engine treats its value as sensitive. A secret that
        the caller handed over for ``ref.uri`` is used as it is.
        """
        given = self.secrets.get(ref.uri)
        if given is not None:
            return given
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


def registry_of(repository: str) -> str:
    """Return the registry host[:port] of a repository, ``docker.io`` for Docker Hub."""
    registry, _ = docker.auth.resolve_repository_name(repository)
    return str(registry)


def check_registry(repository: str) -> str:
    """Return the repository's registry, or raise ConfigError when an engine cannot reach it.

    The engine runs in a container of its own, so a registry on the
    caller's loopback is not the registry that it would push to.
    """
    registry = registry_of(repository)
    host = registry.rsplit(":", 1)[0] if not registry.endswith("]") else registry
    host = host.strip("[]")
    if host == "localhost" or _is_loopback(host):
        raise ConfigError(
            f"registry {registry} of repository {repository} is on loopback, "
            "which the Dagger engine does not reach",
            hint="push to a registry address that the engine reaches, or run "
            "with --engine docker",
        )
    return registry


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _push_failure(
    error: str,
    registry: str,
    address: str,
    pushed: list[str],
    digest: str | None,
    username: str | None,
) -> PublishFailed:
    """Explain a push that failed, naming the tags that this publish pointed
    at ``digest`` before it."""
    if pushed:
        existing = f"tags that point at {digest} now: " + ", ".join(pushed)
    else:
        existing = "no tag was pushed"
    if AUTH_PUSH_ERROR.search(error):
        user = f"user {username!r}" if username else "anonymous access"
        return PublishFailed(
            f"registry {registry} rejected {user} for {address}: {error} ({existing})",
            hint="check the user name and password given for this registry, and "
            "that the user may push to the repository",
            existing_tags=tuple(pushed),
        )
    return PublishFailed(
        f"pushing {address} failed on Dagger: {error} ({existing})",
        hint=f"check that the engine reaches {registry}; publishing again pushes "
        "every tag again",
        existing_tags=tuple(pushed),
    )


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

    async def publish(
        self, spec: PublishSpec, on_output: StepOutputCallback
    ) -> PublishOutput:
        """Push each tag with ``Container.publish``, the first tag giving the digest.

        Every push must report the same digest. A push that fails on a 5xx
        response or a dropped connection is retried up to ``spec.attempts``
        times in all. What is reported goes to ``spec.log_file`` as well.
        """
        if not spec.tags:
            raise ConfigError(f"nothing to publish: no tag for {spec.repository}")
        registry = check_registry(spec.repository)
        lines: list[str] = []

        def report(text: str) -> None:
            lines.append(text)
            on_output(text)

        try:
            return await self._publish(spec, registry, report)
        except PublishFailed as exc:
            lines.append(f"ERROR: {exc.message}\n")
            raise
        finally:
            if spec.log_file is not None and lines:
                spec.log_file.parent.mkdir(parents=True, exist_ok=True)
                write_text(spec.log_file, "".join(lines))

    async def _publish(
        self, spec: PublishSpec, registry: str, on_output: StepOutputCallback
    ) -> PublishOutput:
        if spec.insecure:
            on_output(
                f"note: registry.insecure has no effect on Dagger; the engine's own "
                f"configuration decides whether it talks plain HTTP to {registry}\n"
            )
        container, username = self._authenticated(spec, registry)
        digest: str | None = None
        pushed: list[str] = []
        for tag in spec.tags:
            address = f"{spec.repository}:{tag}"
            try:
                published = await self._push(container, address, spec.attempts, on_output)
            except dagger.QueryError as exc:
                error = self.inputs.redactor(str(exc).strip())
                raise _push_failure(error, registry, address, pushed, digest, username) from None
            match = PUBLISHED_DIGEST.search(published)
            if match is None:
                raise PublishFailed(
                    f"pushing {address} returned {published!r}, which names no digest",
                    existing_tags=(*pushed, tag),
                )
            if digest is not None and match["digest"] != digest:
                raise PublishFailed(
                    f"tag {tag} points at {match['digest']}, not at {digest} like "
                    "the tags pushed before it",
                    hint="publish again; another push to the same repository may "
                    "have run at the same time",
                    existing_tags=(*pushed, tag),
                )
            digest = match["digest"]
            pushed.append(tag)
            on_output(f"pushed {address}@{digest}\n")
        assert digest is not None, "a publish with tags pushed at least one"
        return PublishOutput(digest, f"{spec.repository}@{digest}", tuple(pushed))

    def _authenticated(
        self, spec: PublishSpec, registry: str
    ) -> tuple[dagger.Container, str | None]:
        """Return the image with the registry's credentials, and the user name.

        The password reaches the engine only as a Secret. The API takes the
        user name as a plain string, so a referenced user name appears in the
        query.
        """
        container = self.inputs.image(spec.image)
        username = spec.username
        if isinstance(username, SecretRef):
            username = resolve(username, self.inputs.redactor).strip()
        if spec.password is None:
            if username:
                raise ConfigError(
                    f"registry {registry}: user {username!r} is given without a password",
                    hint="name the password as a secret reference, or remove the user",
                )
            return container, None
        if not username:
            raise ConfigError(
                f"registry {registry}: a password is given without a user name",
                hint="set the registry's user name",
            )
        password = self.inputs.secret(spec.password)
        return container.with_registry_auth(spec.repository, username, password), username

    async def _push(
        self,
        container: dagger.Container,
        address: str,
        attempts: int,
        on_output: StepOutputCallback,
    ) -> str:
        def announce(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            delay = state.next_action.sleep if state.next_action else 0.0
            text = self.inputs.redactor(str(error).strip())
            log.warning(
                "push of %s failed (attempt %d of %d), retrying in %.1f s: %s",
                address, state.attempt_number, attempts, delay, text,
            )
            on_output(
                f"push of {address} failed (attempt {state.attempt_number} of "
                f"{attempts}), retrying in {delay:.1f} s: {text}\n"
            )

        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(max(attempts, 1)),
            wait=tenacity.wait_exponential(
                multiplier=PUSH_RETRY_DELAY, max=PUSH_RETRY_MAX_DELAY
            ),
            retry=tenacity.retry_if_exception(_is_transient),
            before_sleep=announce,
            reraise=True,
        )
        published: str = await retrying(container.publish, address)
        return published

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


def _is_transient(error: BaseException) -> bool:
    return (
        isinstance(error, dagger.QueryError)
        and not isinstance(error, dagger.ExecError)
        and TRANSIENT_PUSH_ERROR.search(str(error)) is not None
    )


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
