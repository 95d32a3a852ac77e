"""Backends run step descriptions. One module each, picked by name.

Backend modules are imported only when chosen, because each imports its
engine's client library, and dagger-io alone took 1 to 2.5 s to import on a
2-core build machine.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UsageError
from .base import Backend, StepOutputCallback

if TYPE_CHECKING:
    from ..config import Settings
    from ..secrets import Redactor

log = logging.getLogger(__name__)

ENGINES = ("docker", "dagger")
ENGINE_CHOICES = (*ENGINES, "auto")
DAGGER_CLI = "dagger"
DAGGER_SESSION_PORT_ENV = "DAGGER_SESSION_PORT"
# dagger-io 0.21.8 starts the CLI named here instead of downloading one
# (dagger/provisioning/_engine.py).
DAGGER_CLI_BIN_ENV = "_EXPERIMENTAL_DAGGER_CLI_BIN"


@dataclass(frozen=True)
class DaggerEndpoint:
    """How to reach a Dagger engine: a running session, or a CLI that starts one."""

    session_port: str | None = None
    cli: str | None = None

    def describe(self) -> str:
        if self.session_port is not None:
            port = self.session_port
            return f"the Dagger session on port {port} ({DAGGER_SESSION_PORT_ENV})"
        return f"a new Dagger session started by {self.cli}"


def find_dagger() -> DaggerEndpoint | None:
    """Find a Dagger session or CLI without starting or downloading anything."""
    port = os.environ.get(DAGGER_SESSION_PORT_ENV)
    if port:
        return DaggerEndpoint(session_port=port)
    cli = os.environ.get(DAGGER_CLI_BIN_ENV) or shutil.which(DAGGER_CLI)
    if cli:
        return DaggerEndpoint(cli=cli)
    return None


@dataclass(frozen=True)
class EngineChoice:
    """The engine a run uses, and why, in words fit for the user."""

    name: str
    reason: str

    def describe(self) -> str:
        return f"{self.name} ({self.reason})"


def choose_engine(requested: str) -> EngineChoice:
    """Resolve ``docker``, ``dagger`` or ``auto`` to an engine name.

    ``auto`` picks Dagger when a session (``DAGGER_SESSION_PORT``) or a
    ``dagger`` CLI on PATH is present, else the Docker Engine.
    """
    if requested in ENGINES:
        return EngineChoice(requested, "requested")
    if requested != "auto":
        raise UsageError(
            f"unknown engine {requested!r}",
            hint=f"choose one of: {', '.join(ENGINE_CHOICES)}",
        )
    endpoint = find_dagger()
    if endpoint is not None:
        return EngineChoice("dagger", f"auto: found {endpoint.describe()}")
    missing = f"{DAGGER_SESSION_PORT_ENV} is not set and no {DAGGER_CLI} CLI is on PATH"
    return EngineChoice("docker", f"auto: {missing}")


async def open_backend(
    engine: str, run_id: str, redactor: Redactor, settings: Settings
) -> Backend:
    """Open the backend for ``engine`` (``docker``, ``dagger`` or ``auto``).

    Raises NoEngineError when the engine cannot be reached, before any step
    starts.
    """
    choice = choose_engine(engine)
    log.info("engine: %s", choice.describe())
    if choice.name == "docker":
        from .docker import DockerBackend

        return DockerBackend(run_id, redactor, settings.docker_cli)

    from .dagger import connect

    return await connect(run_id, redactor)


__all__ = [
    "Backend",
    "DaggerEndpoint",
    "ENGINE_CHOICES",
    "EngineChoice",
    "StepOutputCallback",
    "choose_engine",
    "find_dagger",
    "open_backend",
]
