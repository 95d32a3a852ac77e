"""GitLab CI log sections: one collapsible section per step in the final report.

GitLab folds the lines between ``section_start`` and ``section_end`` markers
and shows each section's duration (docs.gitlab.com, "CI/CD job logs"), so
each section carries its step's start and end. A failed step's section
starts expanded, the others collapsed.
"""

from __future__ import annotations

import re
import time

from ..results import Status, StepResult
from ..steps._context import plural

MAX_FINDINGS_SHOWN = 30
# Section names keep to letters, digits, "_", "." and "-", so that no
# character of a step name can end the marker early.
NAME_INVALID = re.compile(r"[^A-Za-z0-9_.-]")
ERASE_LINE = "\x1b[0K"


def section_start(name: str, header: str, timestamp: int, collapsed: bool) -> str:
    options = "[collapsed=true]" if collapsed else ""
    header = " ".join(header.split())
    marker = f"section_start:{timestamp}:{name}{options}"
    return f"{ERASE_LINE}{marker}\r{ERASE_LINE}{header}\n"


def section_end(name: str, timestamp: int) -> str:
    return f"{ERASE_LINE}section_end:{timestamp}:{name}\r{ERASE_LINE}\n"


def log_sections(results: list[StepResult]) -> str:
    """Render each step's findings and output tail inside its own section."""
    parts = []
    for result in results:
        name = "pipeline_" + NAME_INVALID.sub("_", result.name)
        started = int(result.started.timestamp() if result.started else time.time())
        ended = started + round(result.duration)
        header = f"{result.name}: {result.status.value} ({result.duration:.1f}s) "
        header += result.summary
        collapsed = result.status is not Status.FAILED
        parts.append(section_start(name, header, started, collapsed))
        parts.append(step_text(result))
        parts.append(section_end(name, ended))
    return "".join(parts)


def step_text(result: StepResult) -> str:
    """List blocking findings, then the ones below the gate, then the output tail."""
    lines: list[str] = []
    blocking = result.blocking_findings
    below_gate = [finding for finding in result.findings if not finding.blocking]
    groups = (("blocking", blocking), ("below the severity gate", below_gate))
    for title, findings in groups:
        if not findings:
            continue
        lines.append(f"{plural(len(findings), 'finding')} {title}:")
        lines += ["  " + finding.format() for finding in findings[:MAX_FINDINGS_SHOWN]]
        if len(findings) > MAX_FINDINGS_SHOWN:
            more = len(findings) - MAX_FINDINGS_SHOWN
            lines.append(f"  ... and {more} more in the reports")
    # As on a terminal, the output is shown when there are no findings, and
    # for failed tests, whose findings contain only the assertion.
    show_output = not blocking or result.name == "test"
    if result.output and result.status is Status.FAILED and show_output:
        lines.append("output (last lines):")
        lines += ["  " + line for line in result.output.splitlines()]
    if not lines:
        lines.append(result.summary)
    return "\n".join(lines) + "\n"
