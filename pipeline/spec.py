"""Step descriptions: plain data that any backend can run.

A step module turns settings and the project into these values. A backend
turns them into containers (Docker Engine) or API calls (Dagger). Nothing here
depends on either, so both backends run the very same description.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SecretRef:
    """A secret by reference; its value is read only when a container needs it.

    ``uri`` is ``env://NAME`` or ``file://PATH``.
    """

    name: str
    uri: str


@dataclass(frozen=True)
class SecretMount:
    """A secret handed to a container, as a file or as a variable, never as
    a plain argument."""

    secret: SecretRef
    path: str | None = None
    env: str | None = None


@dataclass(frozen=True)
class CacheMount:
    """A named cache kept between runs (pip's download cache, Trivy's DB)."""

    key: str
    path: str


@dataclass(frozen=True)
class SourceMount:
    """The project tree copied into the container, minus the excluded paths.

    ``exclude`` contains gitignore-style patterns relative to ``host_path``.
    """

    host_path: Path
    path: str
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class FileMount:
    """One host file copied into the container (a CA bundle, an ignore file)."""

    host_path: Path
    path: str


@dataclass(frozen=True)
class ImageInput:
    """A built image handed to the step as an image tarball at ``path``."""

    image: str
    path: str


@dataclass(frozen=True)
class StepSpec:
    """One containerized step.

    The backend runs ``setup`` commands in order, each of which must succeed,
    then every one of ``commands``, whatever their exit codes; their codes
    and output go back to the step module for judging. ``outputs`` are paths
    of regular files in the container, copied to the reports folder whether
    the commands passed or not. Anything else at such a path, such as a
    symbolic link, is not copied.
    """

    name: str
    image: str
    commands: tuple[tuple[str, ...], ...]
    workdir: str = "/src"
    setup: tuple[tuple[str, ...], ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    source: SourceMount | None = None
    files: tuple[FileMount, ...] = ()
    images: tuple[ImageInput, ...] = ()
    caches: tuple[CacheMount, ...] = ()
    secrets: tuple[SecretMount, ...] = ()
    outputs: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    host_network: bool = False


@dataclass(frozen=True)
class BuildSpec:
    """An image build from a Dockerfile with BuildKit."""

    name: str
    context: Path
    dockerfile: Path
    tags: tuple[str, ...]
    target: str | None = None
    build_args: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    secrets: tuple[SecretMount, ...] = ()
    # The host file that receives the full build output, when the backend
    # streams it; the build step writes the log itself otherwise.
    log_file: Path | None = None


# The end of each output stream that a backend keeps in memory, in characters.
# The step's log file contains the whole output.
OUTPUT_TAIL_CHARS = 1024 * 1024


@dataclass(frozen=True)
class CommandResult:
    """One command's exit code and the end of its output.

    ``stdout`` and ``stderr`` contain at most OUTPUT_TAIL_CHARS characters
    each, the end of the stream. ``truncated`` is true when either lost its
    beginning. The step's log file (``ExecResult.log``) contains all of it.
    """

    command: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str
    truncated: bool = False

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass(frozen=True)
class ExecResult:
    """What a backend returns for a StepSpec: one result per command run,
    and the host paths of the outputs it copied out.

    When a setup command fails, ``setup_failed`` is its result and no
    command ran. ``log`` is the file in the reports folder that the backend
    streamed every command's full output to, or None when it wrote none.
    """

    results: tuple[CommandResult, ...]
    outputs: dict[str, Path]
    setup_failed: CommandResult | None = None
    log: Path | None = None


@dataclass(frozen=True)
class BuildOutput:
    """The outcome of a build.

    ``log`` is the end of the build output, at most OUTPUT_TAIL_CHARS
    characters. ``log_file`` is the file that contains all of it, or None when
    the backend wrote none. ``builder_started`` is false when the build
    client failed before the builder started, as on an invalid tag, so that
    the failure is the client's and not the Dockerfile's.
    """

    exit_code: int
    log: str
    image_id: str | None
    tags: tuple[str, ...]
    log_file: Path | None = None
    builder_started: bool = True


@dataclass(frozen=True)
class PublishSpec:
    """A push of a built local image to a registry.

    The backend checks the credentials before it pushes anything, pushes
    the manifest by digest first, then points each tag at that digest.
    ``username`` is a plain name or a reference; ``password`` is always a
    reference, resolved only when the backend talks to the registry.
    """

    name: str
    image: str
    repository: str
    tags: tuple[str, ...]
    username: SecretRef | str | None = None
    password: SecretRef | None = None
    insecure: bool = False
    attempts: int = 4
    log_file: Path | None = None
    # The CA bundle that verifies an HTTPS registry's certificate; None
    # keeps the HTTP client's default trust store.
    ca_bundle: Path | None = None


@dataclass(frozen=True)
class PublishOutput:
    """What a publish left in the registry.

    ``reference`` is ``repository@sha256:...``, the only form deploys use.
    ``tags`` are the tags that point at the digest now.
    """

    digest: str
    reference: str
    tags: tuple[str, ...]
