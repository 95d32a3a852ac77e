"""The Markdown summary of a run, as GitHub shows it on the job's summary page."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..results import Finding, Status, StepResult
from ..steps._context import plural
from ._common import RepositoryPaths
from ._record import image_summary

if TYPE_CHECKING:
    from ..run import RunRecord

FILE_NAME = "summary.md"
# GitHub accepts at most 1 MiB of summary per step, so long lists are cut.
MAX_LISTED = 50
MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|])")


def build_summary(record: RunRecord, paths: RepositoryPaths) -> str:
    """Render the steps table, the image and the blocking findings."""
    status = "passed" if record.ok else "failed"
    lines = [
        f"## pipeline: {status}",
        "",
        "| Step | Status | Time | Result | Findings |",
        "|---|---|---:|---|---|",
    ]
    for result in record.results:
        lines.append(
            f"| {result.name} | {_status(result.status)} | {result.duration:.1f}s "
            f"| {escape(result.summary)} | {_counts(result)} |"
        )
    lines.append("")

    image = _image_line(record)
    if image:
        lines += [image, ""]
    for result in record.results:
        lines += _step_details(result, paths)
    below_gate = sum(
        len(step.findings) - len(step.blocking_findings) for step in record.results
    )
    if below_gate:
        lines += [
            f"{plural(below_gate, 'finding')} below the severity gate "
            + (
                "does not fail the run; it is listed in the reports."
                if below_gate == 1
                else "do not fail the run; they are listed in the reports."
            ),
            "",
        ]
    where = paths.project_label or record.project.name
    lines.append(
        f"Run {code(record.run_id)} of {code(where)} on {record.engine}, "
        f"started {record.started}."
    )
    return "\n".join(lines) + "\n"


def _status(status: Status) -> str:
    return f"**{status.value}**" if status is Status.FAILED else status.value


def _counts(result: StepResult) -> str:
    blocking = len(result.blocking_findings)
    other = len(result.findings) - blocking
    parts = []
    if blocking:
        parts.append(f"{blocking} blocking")
    if other:
        parts.append(f"{other} below the gate")
    return ", ".join(parts) or "none"


def _image_line(record: RunRecord) -> str | None:
    image = image_summary(record.results)
    if image is None:
        return None
    text = f"Image {code(str(image['name']))}"
    if image.get("id"):
        text += f", ID {code(str(image['id']))}"
    if image.get("operating_system"):
        text += f", {escape(str(image['operating_system']))}"
    published = image.get("published")
    if published:
        text += f", pushed as {code(str(published['reference']))}"
    return text + "."


def _step_details(result: StepResult, paths: RepositoryPaths) -> list[str]:
    """List a step's blocking findings, or the end of its output when it has none."""
    blocking = result.blocking_findings
    if blocking:
        lines = [f"### {result.name}: blocking findings", ""]
        for finding in blocking[:MAX_LISTED]:
            location = code(_location(finding, paths))
            lines.append(f"- {location} {escape(_text(finding))}")
        if len(blocking) > MAX_LISTED:
            lines.append(f"- … and {len(blocking) - MAX_LISTED} more, in the reports")
        return lines + [""]
    if result.status is Status.FAILED and result.output:
        return [
            f"<details><summary>{result.name} output (last lines)</summary>",
            "",
            fence(result.output),
            "</details>",
            "",
        ]
    return []


def _location(finding: Finding, paths: RepositoryPaths) -> str:
    if finding.image is not None or finding.path is None:
        return finding.location()
    location = paths.relative(finding.path)
    for number in (finding.line, finding.column if finding.line is not None else None):
        if number is not None:
            location += f":{number}"
    return location


def _text(finding: Finding) -> str:
    severity = f"[{finding.severity}] " if finding.severity else ""
    return f"{finding.rule} {severity}{finding.message}"


def escape(text: str) -> str:
    """Escape Markdown in one line of text, including table separators."""
    return MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(text.split()))


def code(text: str) -> str:
    """Render text as a code span, fenced by more backticks than it contains."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * (longest + 1)
    padding = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{padding}{text}{padding}{ticks}"


def fence(text: str) -> str:
    longest = max((len(run) for run in re.findall(r"`{3,}", text)), default=2)
    ticks = "`" * (longest + 1)
    return f"{ticks}text\n{text.rstrip()}\n{ticks}"
