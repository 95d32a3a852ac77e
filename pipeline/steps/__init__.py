"""One module per step. Each builds step descriptions from the settings and
the project, and judges the output of its tool; none imports a backend."""

from __future__ import annotations

from ._context import Context, Step
from . import build, lint, publish, scan, test

STEPS: dict[str, Step] = {
    step.NAME: Step(step.NAME, step.NEEDS, step.run, step.FILES, getattr(step, "AFTER", ()))
    for step in (lint, test, build, scan, publish)
}

__all__ = ["Context", "STEPS", "Step"]
