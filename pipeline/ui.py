"""The terminal view: a live table while steps run, a summary at the end."""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .results import Status, StepResult

STYLES = {
    Status.PENDING: "dim",
    Status.RUNNING: "cyan",
    Status.PASSED: "green",
    Status.FAILED: "bold red",
    Status.SKIPPED: "yellow",
    Status.CANCELLED: "magenta",
}
MAX_FINDINGS_SHOWN = 30


class LiveView:
    """Shows each step's state and elapsed time; plain lines when not a TTY."""

    def __init__(self, console: Console, steps: list[str]) -> None:
        self.console = console
        self.states = {name: Status.PENDING for name in steps}
        self.started: dict[str, float] = {}
        self.finished: dict[str, float] = {}
        self.summaries: dict[str, str] = {}
        self.live: Live | None = None
        if console.is_terminal:
            self.live = Live(self, console=console, refresh_per_second=4, transient=True)

    def __enter__(self) -> LiveView:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.live is not None:
            self.live.stop()

    def update(self, name: str, status: Status, result: StepResult | None) -> None:
        now = time.monotonic()
        self.states[name] = status
        if status is Status.RUNNING:
            self.started[name] = now
        else:
            self.finished[name] = now
        if result is not None:
            self.summaries[name] = result.summary
        if self.live is None:
            line = f"{name}: {status.value}"
            if result is not None:
                line += f" ({result.duration:.1f}s) {result.summary}"
            self.console.print(escape(line), highlight=False)

    def _elapsed(self, name: str) -> str:
        if name not in self.started:
            return ""
        end = self.finished.get(name, time.monotonic())
        return f"{end - self.started[name]:.1f}s"

    def __rich__(self) -> Table:
        table = Table(box=None, show_header=False, padding=(0, 2))
        for name, status in self.states.items():
            table.add_row(
                name,
                Text(status.value, style=STYLES[status]),
                self._elapsed(name),
                Text(self.summaries.get(name, ""), overflow="ellipsis", no_wrap=True),
            )
        return table


def summary_table(results: list[StepResult]) -> Table:
    table = Table(title="pipeline", title_justify="left")
    table.add_column("step")
    table.add_column("status")
    table.add_column("time", justify="right")
    table.add_column("result")
    for result in results:
        table.add_row(
            result.name,
            Text(result.status.value, style=STYLES[result.status]),
            f"{result.duration:.1f}s",
            Text(result.summary),
        )
    return table


def failure_details(result: StepResult) -> Group:
    """Render the findings and the tail of the output of a failed step."""
    parts: list[Text] = [Text(f"\n{result.name} failed: {result.summary}", style="bold red")]
    blocking = result.blocking_findings
    for finding in blocking[:MAX_FINDINGS_SHOWN]:
        parts.append(Text("  " + finding.format()))
    if len(blocking) > MAX_FINDINGS_SHOWN:
        parts.append(Text(f"  ... and {len(blocking) - MAX_FINDINGS_SHOWN} more"))
    if result.output and (not blocking or result.name == "test"):
        parts.append(Text("  output (last lines):", style="dim"))
        parts.append(Text("\n".join("    " + line for line in result.output.splitlines())))
    return Group(*parts)
