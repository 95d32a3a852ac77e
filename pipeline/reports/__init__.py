"""The reports that CI systems and people read, written for every run.

``write_reports`` writes the report files into the run's reports folder. The
CLI and the Dagger module both reach it through ``pipeline.run.write_record``,
so every backend writes the same files. ``github_annotations`` and
``gitlab_sections`` return what the CLI prints under GitHub Actions and
GitLab CI. docs/reports.md describes each file and its consumer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from . import codequality, container_scanning, markdown, sarif
from ._common import RepositoryPaths
from ._record import image_summary
from .annotations import workflow_annotations
from .junit import ensure_junit
from .sections import log_sections

if TYPE_CHECKING:
    from ..run import RunRecord

__all__ = ["github_annotations", "gitlab_sections", "image_summary", "write_reports"]

log = logging.getLogger(__name__)


def write_reports(
    record: RunRecord, folder: Path, environ: Mapping[str, str]
) -> dict[str, Path]:
    """Write every report of a run into ``folder`` and return them by kind.

    A report whose tool did not run this time is removed, so that no report
    carries an earlier run's findings. When ``GITHUB_STEP_SUMMARY`` is set,
    the Markdown summary is also appended to that file.
    """
    paths = RepositoryPaths.find(record.project, environ)
    written: dict[str, Path] = {}
    junit = ensure_junit(record.results, folder)
    if junit is not None:
        written["junit"] = junit
    for kind, name, content in (
        ("sarif", sarif.FILE_NAME, sarif.build_sarif(record.results, paths)),
        (
            "codequality",
            codequality.FILE_NAME,
            codequality.build_code_quality(record.results, paths),
        ),
        (
            "container_scanning",
            container_scanning.FILE_NAME,
            container_scanning.build_container_scanning(record.results),
        ),
    ):
        path = folder / name
        if content is None:
            path.unlink(missing_ok=True)
            continue
        path.write_text(json.dumps(content, indent=2) + "\n")
        written[kind] = path

    summary = markdown.build_summary(record, paths)
    written["summary"] = folder / markdown.FILE_NAME
    written["summary"].write_text(summary)
    _append_step_summary(summary, environ)
    return written


def _append_step_summary(summary: str, environ: Mapping[str, str]) -> None:
    target = environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return
    try:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(summary + "\n")
    except OSError as exc:
        log.warning(
            "could not append the summary to GITHUB_STEP_SUMMARY (%s): %s", target, exc
        )


def github_annotations(record: RunRecord, environ: Mapping[str, str]) -> list[str]:
    """Return the workflow commands for a run under GitHub Actions, else none."""
    if environ.get("GITHUB_ACTIONS") != "true":
        return []
    paths = RepositoryPaths.find(record.project, environ)
    return workflow_annotations(record.results, paths)


def gitlab_sections(record: RunRecord, environ: Mapping[str, str]) -> str | None:
    """Return the run's steps as collapsible log sections under GitLab CI, else None."""
    if environ.get("GITLAB_CI") != "true":
        return None
    return log_sections(record.results)
