"""What every step receives, and helpers shared by the container steps."""

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
from ..spec import CacheMount, ExecResult, FileMount, SourceMount

SOURCE_PATH = "/src"
REPORTS_PATH = "/reports"
CA_PATH = "/etc/ssl/certs/pipeline-extra-ca.crt"
TOOLS_PATH = "/opt/pipeline-tools"
PIP_CACHE = CacheMount("pip", "/root/.cache/pip")
TOOLS_CACHE = CacheMount("tools", TOOLS_PATH)


@dataclass
class Context:
    """The run as the steps see it: project, settings and earlier results."""

    project: Project
    settings: Settings
    reports_dir: Path
    ca_bundle: Path | None
    results: dict[str, StepResult] = field(default_factory=dict)
    image: str | None = None  # set by --image, or by the build step

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
    name: str
    needs: tuple[str, ...]
    run: Callable[[Context, Backend, StepOutputCallback], Awaitable[StepResult]]


def cached_venv(
    name: str, key: str, installs: list[tuple[str, ...]]
) -> tuple[str, tuple[str, ...]]:
    """Return a virtualenv path in the tools cache and the command that
    creates it once.

    ``key`` is everything the virtualenv's content depends on, so a warm run
    installs nothing. A lock (flock, from util-linux) keeps concurrent runs
    from building the same virtualenv twice, and ``.complete`` is written
    last, so a build that was interrupted is redone on the next run.
    """
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    venv = f"{TOOLS_PATH}/{name}-{digest}"
    pip = f"{venv}/bin/python -m pip install --quiet"
    steps = " && ".join(f"{pip} {shlex.join(arguments)}" for arguments in installs)
    script = (
        f"exec 9>{venv}.lock && flock 9 && "
        f"{{ test -e {venv}/.complete && exit 0; "
        f"rm -rf {venv} && python3 -m venv {venv} && {steps} && "
        f"touch {venv}/.complete; }}"
    )
    return venv, ("sh", "-c", script)


def tool_venv(image: str, requirement: str) -> tuple[str, tuple[str, ...]]:
    """Return a tool's virtualenv, keyed by image and pip requirement."""
    name = re.split(r"[^A-Za-z0-9_.-]", requirement, maxsplit=1)[0] or "tool"
    return cached_venv(name, f"{image}\0{requirement}", [(requirement,)])


def save_log(ctx: Context, step: str, execution: ExecResult) -> Path:
    """Write a step's full output to ``<step>.log`` in the reports folder."""
    path = ctx.reports_dir / f"{step}.log"
    parts = []
    for result in (execution.setup_failed, *execution.results):
        if result is not None:
            parts.append(f"$ {shlex.join(result.command)}\n{result.output}")
            parts.append(f"[exit code {result.exit_code}]\n")
    ctx.reports_dir.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    return path


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
