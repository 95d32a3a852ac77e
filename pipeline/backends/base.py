"""The interface every backend implements."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ..spec import BuildOutput, BuildSpec, ExecResult, StepSpec

StepOutputCallback = Callable[[str], None]


class Backend(Protocol):
    """Runs step descriptions; knows nothing about which step it runs."""

    name: str

    async def run(
        self, spec: StepSpec, reports_dir: Path, on_output: StepOutputCallback
    ) -> ExecResult:
        """Run one step container and copy its outputs into reports_dir."""
        ...

    async def build(self, spec: BuildSpec, on_output: StepOutputCallback) -> BuildOutput:
        """Build an image with BuildKit."""
        ...

    async def close(self) -> None:
        """Remove every resource of this run; kept caches stay."""
        ...
