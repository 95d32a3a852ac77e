"""The interface of deploy targets, and the release they roll out."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from ..config import EnvironmentSettings

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Release:
    """One image rolled out to one environment.

    ``image`` is always ``repository@sha256:...``. ``secrets`` and
    ``registry_auth`` hold resolved values, already known to the run's
    redactor; a target hands them to the orchestrator and never logs them.
    """

    environment: str
    settings: EnvironmentSettings
    name: str
    image: str
    secrets: Mapping[str, str] = field(default_factory=dict)
    registry_auth: tuple[str, str] | None = None


@dataclass(frozen=True)
class Outcome:
    """The state a deploy or rollback left behind.

    ``image`` is what serves now and ``previous`` what served before.
    """

    status: Literal["deployed", "unchanged", "rolled_back"]
    image: str
    previous: str | None
    detail: str = ""


class Target(Protocol):
    """A place an environment runs: a Swarm service or a Kubernetes Deployment.

    Methods raise DeployFailed when a rollout fails (saying whether the
    previous image serves again) and UsageError when the target cannot be
    reached or its settings do not fit, before anything was changed.
    """

    def current_image(self) -> str | None:
        """Return the image reference that runs now, or None when nothing is deployed."""
        ...

    def deploy(self, release: Release, progress: Progress) -> Outcome:
        """Roll the release out, wait for it to converge and check its health.

        On failure the target rolls back to the previous image itself, then
        raises DeployFailed with ``rolled_back`` set.
        """
        ...

    def rollback(self, progress: Progress) -> Outcome:
        """Return to the image that ran before the last deploy."""
        ...
