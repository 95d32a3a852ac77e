"""The interface every backend implements."""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path
from typing import Protocol

from ..spec import BuildOutput, BuildSpec, ExecResult, PublishOutput, PublishSpec, StepSpec

StepOutputCallback = Callable[[str], None]


class Backend(Protocol):
    """Runs step descriptions without depending on which step it runs."""

    name: str

    async def preflight(self, steps: Collection[str], image: str | None) -> None:
        """Check what the named steps need from this backend before any starts.

        ``image`` is the image passed with ``--image``, if any. Raises
        UsageError (exit code 2) for a problem that the user must fix first.
        """
        ...

    async def run(
        self, spec: StepSpec, reports_dir: Path, on_output: StepOutputCallback
    ) -> ExecResult:
        """Run one step container and copy its outputs into reports_dir.

        A backend may stream the commands' output to ``<spec.name>.log`` in
        reports_dir and name that file in ``ExecResult.log``.
        """
        ...

    async def build(self, spec: BuildSpec, on_output: StepOutputCallback) -> BuildOutput:
        """Build an image with BuildKit.

        A backend may stream the output to ``spec.log_file`` and name that
        file in ``BuildOutput.log_file``.
        """
        ...

    async def publish(self, spec: PublishSpec, on_output: StepOutputCallback) -> PublishOutput:
        """Push a built image to a registry: manifest by digest, then the tags.

        Checks the credentials before anything is pushed. Raises
        PublishFailed, naming the tags that exist, when a push fails midway.
        """
        ...

    async def close(self) -> None:
        """Remove every resource of this run; kept caches stay."""
        ...
