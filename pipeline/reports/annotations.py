"""GitHub Actions workflow commands that annotate files with a run's findings.

A blocking finding becomes ``::error``. One below the severity gate becomes
``::warning`` or ``::notice``, never an error, so annotations agree with the
gate. A failed step without findings gets one error that names the step.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

from ..results import Finding, Status, StepResult
from ..steps._context import plural
from ._common import RepositoryPaths, describe_image_finding, find_step, level

COMMANDS = {"error": "error", "warning": "warning", "note": "notice"}
# GitHub shows at most 10 error, 10 warning and 10 notice annotations per step
# (actions/toolkit, docs/problem-matchers.md), so more would go unseen. The
# last notice counts the findings left out, which the reports list.
MAX_PER_COMMAND = {"error": 10, "warning": 10, "notice": 9}


def escape_data(text: str) -> str:
    """Escape a command's message the way GitHub's toolkit does (@actions/core)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """Escape a property value, where ``:`` and ``,`` are also delimiters."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def workflow_command(
    command: str, message: str, properties: Mapping[str, str | int | None]
) -> str:
    """Render ``::command key=value,...::message``, leaving out empty properties."""
    rendered = ",".join(
        f"{key}={escape_property(str(value))}"
        for key, value in properties.items()
        if value is not None and value != ""
    )
    separator = " " if rendered else ""
    return f"::{command}{separator}{rendered}::{escape_data(message)}"


def workflow_annotations(
    results: list[StepResult], paths: RepositoryPaths
) -> list[str]:
    """Return one annotation per finding and per failed step without findings.

    Steps take turns, so that many findings of one step do not push another
    step's findings past GitHub's limit.
    """
    dockerfile = _dockerfile(results, paths)
    per_step: list[list[tuple[str, str]]] = []
    for result in results:
        step: list[tuple[str, str]] = []
        for finding in result.findings:
            command = COMMANDS[level(finding)]
            step.append((command, _annotate(command, finding, paths, dockerfile)))
        if result.status is Status.FAILED and not result.blocking_findings:
            message = workflow_command(
                "error", result.summary, {"title": f"pipeline: {result.name} failed"}
            )
            step.append(("error", message))
        per_step.append(step)
    turns = itertools.zip_longest(*per_step)
    return _limit([entry for turn in turns for entry in turn if entry is not None])


def _annotate(
    command: str, finding: Finding, paths: RepositoryPaths, dockerfile: str | None
) -> str:
    title = f"{finding.tool} {finding.rule}"
    if finding.severity:
        title += f" [{finding.severity}]"
    message = finding.message
    if finding.image is not None:
        # Files inside the image are not in the repository, so the annotation
        # goes on the Dockerfile that built the image, when there is one.
        message = describe_image_finding(finding)
        file, line, column = dockerfile, None, None
    else:
        file = paths.relative(finding.path) if finding.path else None
        line, column = finding.line, finding.column
    if not finding.blocking:
        message += " (below the severity gate, not blocking)"
    properties: dict[str, str | int | None] = {
        "file": file,
        "line": line if file else None,
        "col": column if file and line else None,
        "title": title,
    }
    return workflow_command(command, message, properties)


def _dockerfile(results: list[StepResult], paths: RepositoryPaths) -> str | None:
    build = find_step(results, "build")
    if build is None or not build.ok or "dockerfile" not in build.details:
        return None
    return paths.relative(str(build.details["dockerfile"]))


def _limit(pending: list[tuple[str, str]]) -> list[str]:
    """Keep the first annotations of each command and count the ones left out."""
    within_limit: list[str] = []
    counts = dict.fromkeys(MAX_PER_COMMAND, 0)
    left_out = 0
    for command, line in pending:
        counts[command] += 1
        if counts[command] <= MAX_PER_COMMAND[command]:
            within_limit.append(line)
        else:
            left_out += 1
    if left_out:
        within_limit.append(
            workflow_command(
                "notice",
                f"{plural(left_out, 'more finding')} "
                f"{'is' if left_out == 1 else 'are'} not annotated; "
                "the reports list them all.",
                {"title": "pipeline"},
            )
        )
    return within_limit
