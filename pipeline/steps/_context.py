"""The context every step receives, and helpers shared by the container steps."""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..backends.base import Backend, StepOutputCallback
from ..config import Settings
from ..project import Project
from ..results import StepResult
from ..spec import CacheMount, ExecResult, FileMount, PublishOutput, SourceMount

SOURCE_PATH = "/src"
REPORTS_PATH = "/reports"
CA_PATH = "/etc/ssl/certs/pipeline-extra-ca.crt"
TOOLS_PATH = "/opt/pipeline-tools"
PIP_CACHE = CacheMount("pip", "/root/.cache/pip")
TOOLS_CACHE = CacheMount("tools", TOOLS_PATH)
# The project's own cache volume (see project_cache) and pip's cache in it.
PROJECT_CACHE_PATH = "/opt/pipeline-project-cache"
PROJECT_PIP_CACHE = f"{PROJECT_CACHE_PATH}/pip"


@dataclass
class Context:
    """The run as the steps see it: project, settings and earlier results."""

    project: Project
    settings: Settings
    reports_dir: Path
    ca_bundle: Path | None
    results: dict[str, StepResult] = field(default_factory=dict)
    image: str | None = None  # set by --image, or by the build step
    # The environment named by --env, whose registry a publish pushes to.
    environment: str | None = None
    # Whether the scan also writes a CycloneDX SBOM of the image; set for
    # runs that publish with publish.sbom.
    sbom: bool = False
    # What the publish step pushed; deploys use its ``reference``
    # (``repository@sha256:...``).
    published: PublishOutput | None = None
    # The push the publish step started, even if the run was interrupted
    # before it returned: (repository, tags).
    publishing: tuple[str, tuple[str, ...]] | None = None

    def source(self) -> SourceMount:
        return SourceMount(
            self.project.path, SOURCE_PATH, self.project.ignore_patterns()
        )

    def common_env(self) -> tuple[tuple[str, str], ...]:
        env = [
            ("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
            ("PIP_ROOT_USER_ACTION", "ignore"),
            ("PIP_PROGRESS_BAR", "off"),
            ("PYTHONDONTWRITEBYTECODE", "1"),
        ]
        if self.ca_bundle is not None:
            env += [
                ("PIP_CERT", CA_PATH),
                ("SSL_CERT_FILE", CA_PATH),
                ("REQUESTS_CA_BUNDLE", CA_PATH),
            ]
        return tuple(env)

    def ca_files(self) -> tuple[FileMount, ...]:
        if self.ca_bundle is None:
            return ()
        return (FileMount(self.ca_bundle, CA_PATH),)


@dataclass(frozen=True)
class Step:
    """A step in the run graph.

    ``files`` names what the step writes directly into the reports folder
    (its log and its tool's outputs), which a new run removes first.
    ``after`` names steps that must pass first when the same run includes
    them, without adding them to a run that does not.
    """

    name: str
    needs: tuple[str, ...]
    run: Callable[[Context, Backend, StepOutputCallback], Awaitable[StepResult]]
    files: tuple[str, ...] = ()
    after: tuple[str, ...] = ()


def cached_venv(
    name: str, key: str, installs: list[tuple[str, ...]], root: str = TOOLS_PATH
) -> tuple[str, tuple[str, ...]]:
    """Return a virtualenv path in a cache volume mounted at ``root`` (the
    tools cache by default) and the command that creates it once.

    ``key`` is everything the virtualenv's content depends on, so a warm run
    installs nothing. A lock (flock, from util-linux) keeps concurrent runs
    from building the same virtualenv twice, and ``.complete`` is written
    last, so a build that was interrupted is redone on the next run.
    """
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    venv = f"{root}/{name}-{digest}"
    pip = f"{venv}/bin/python -m pip install --quiet"
    steps = " && ".join(f"{pip} {shlex.join(arguments)}" for arguments in installs)
    script = (
        f"exec 9>{venv}.lock && flock 9 && "
        f"{{ test -e {venv}/.complete && exit 0; "
        f"rm -rf {venv} && python3 -m venv {venv} && {steps} && "
        f"touch {venv}/.complete; }}"
    )
    return venv, ("sh", "-c", script)


def tool_venv(
    image: str, requirement: str, root: str = TOOLS_PATH
) -> tuple[str, tuple[str, ...]]:
    """Return a tool's virtualenv, keyed by image and pip requirement."""
    name = re.split(r"[^A-Za-z0-9_.-]", requirement, maxsplit=1)[0] or "tool"
    return cached_venv(name, f"{image}\0{requirement}", [(requirement,)], root)


def project_cache(project: Project) -> CacheMount:
    """Return the project's own cache volume, keyed by the project's path.

    Steps that run the project's code use it in place of the shared caches:
    test runs the project's tests, and lint lets flake8 load plugins from
    the project (``[flake8:local-plugins]``). They mount it read-write, so
    a project can change only its own cache, never the tools that scan runs
    or another project's packages. It contains their virtualenvs and pip's cache.
    """
    key = hashlib.sha256(str(project.path).encode()).hexdigest()[:16]
    return CacheMount(f"project-{key}", PROJECT_CACHE_PATH)


def log_name(step: str) -> str:
    """Return the name of a step's log file in the reports folder."""
    return f"{step}.log"


def save_log(ctx: Context, step: str, execution: ExecResult) -> Path:
    """Return the file with a step's full output, ``<step>.log`` in the reports
    folder: the backend's own, or else one written here from the results."""
    # Imported here because pipeline.reports imports the steps.
    from ..reports._files import write_text

    if execution.log is not None:
        return execution.log
    parts = []
    for result in (execution.setup_failed, *execution.results):
        if result is not None:
            parts.append(f"$ {shlex.join(result.command)}\n{result.output}")
            parts.append(f"[exit code {result.exit_code}]\n")
    ctx.reports_dir.mkdir(parents=True, exist_ok=True)
    return write_text(ctx.reports_dir / log_name(step), "\n".join(parts))


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def plural(count: int, noun: str) -> str:
    """Return ``count`` with ``noun``, adding an "s" unless the count is 1."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
