"""Run steps as a small graph: each starts when the steps it needs passed.

A step also waits for the steps it runs ``after`` (publish after lint and
test), but only when the run includes them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone

import anyio

from .backends.base import Backend
from .errors import PipelineError, UsageError
from .results import Status, StepResult
from .steps import STEPS, Context, Step

log = logging.getLogger(__name__)

StepEvent = Callable[[str, Status, StepResult | None], None]


def plan(names: list[str]) -> list[Step]:
    """Return the named steps plus the steps they need, in a stable order."""
    wanted: list[str] = []

    def add(name: str) -> None:
        if name not in STEPS:
            raise UsageError(f"unknown step {name!r}", hint=f"steps: {', '.join(STEPS)}")
        for need in STEPS[name].needs:
            add(need)
        if name not in wanted:
            wanted.append(name)

    for name in names:
        add(name)
    return [STEPS[name] for name in STEPS if name in wanted]


async def run_graph(
    steps: list[Step], ctx: Context, backend: Backend, on_event: StepEvent
) -> list[StepResult]:
    """Run steps concurrently where independent; return results in step order.

    A step whose need failed is skipped. Usage and config errors stop the
    whole run and propagate; any other expected error fails only its step.
    """
    done = {step.name: anyio.Event() for step in steps}
    results: dict[str, StepResult] = {}

    async def run_one(step: Step) -> None:
        waits_for = [name for name in (*step.needs, *step.after) if name in done]
        try:
            for need in waits_for:
                await done[need].wait()
            failed_needs = [
                need for need in waits_for if need in results and not results[need].ok
            ]
            if failed_needs:
                result = StepResult(
                    step.name, Status.SKIPPED, f"skipped: {', '.join(failed_needs)} failed"
                )
            else:
                on_event(step.name, Status.RUNNING, None)
                started_at = datetime.now(timezone.utc)
                started = time.monotonic()
                result = await _run_step(step, ctx, backend)
                result.duration = time.monotonic() - started
                result.started = started_at
            results[step.name] = result
            ctx.results[step.name] = result
            on_event(step.name, result.status, result)
        finally:
            done[step.name].set()

    async with anyio.create_task_group() as group:
        for step in steps:
            group.start_soon(run_one, step)
    return [results[step.name] for step in steps]


async def _run_step(step: Step, ctx: Context, backend: Backend) -> StepResult:
    try:
        return await step.run(ctx, backend, lambda text: None)
    except UsageError:
        raise
    except PipelineError as exc:
        log.info("step %s failed: %s", step.name, exc.message)
        summary = exc.message + (f" ({exc.hint})" if exc.hint else "")
        return StepResult(step.name, Status.FAILED, summary)
