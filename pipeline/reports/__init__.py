"""The reports that CI systems and people read, written for every run.

``write_reports`` writes the report files into the run's reports folder. The
CLI and the Dagger module both reach it through ``pipeline.run.write_record``,
so every backend writes the same files. ``reset_reports_folder`` removes
what an earlier run wrote, before a run starts. ``github_annotations`` and
``gitlab_sections`` return what the CLI prints under GitHub Actions and
GitLab CI. docs/reports.md describes each file and its consumer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..steps import STEPS
from . import codequality, container_scanning, junit, markdown, sarif
from ._common import RepositoryPaths
from ._files import check_folder, remove, write_text
from ._record import RECORD_FILE_NAME, image_summary
from .annotations import workflow_annotations
from .junit import ensure_junit
from .sections import log_sections

if TYPE_CHECKING:
    from ..run import RunRecord

__all__ = [
    "RECORD_FILE_NAME",
    "github_annotations",
    "gitlab_sections",
    "image_summary",
    "pipeline_file_names",
    "reset_reports_folder",
    "write_reports",
]

log = logging.getLogger(__name__)


def pipeline_file_names() -> tuple[str, ...]:
    """Name every file that a run writes directly into the reports folder:
    the steps' logs and tool outputs, the reports and the run record."""
    names = [name for step in STEPS.values() for name in step.files]
    names += [
        junit.FILE_NAME,
        sarif.FILE_NAME,
        codequality.FILE_NAME,
        container_scanning.FILE_NAME,
        markdown.FILE_NAME,
        RECORD_FILE_NAME,
    ]
    return tuple(dict.fromkeys(names))


def reset_reports_folder(project: Path, folder: Path) -> list[Path]:
    """Check and create the reports folder, then remove an earlier run's files.

    Only the files that ``pipeline_file_names`` names are removed, and links
    of those names are removed without following them. Other files and every
    subfolder stay. Raises UsageError when the folder is reached through a
    symbolic link, or when one of those names is a folder.
    """
    check_folder(project, folder)
    folder.mkdir(parents=True, exist_ok=True)
    removed = []
    for name in pipeline_file_names():
        if remove(folder / name):
            removed.append(folder / name)
    if removed:
        log.debug("removed %d files of an earlier run from %s", len(removed), folder)
    return removed


def write_reports(
    record: RunRecord, folder: Path, environ: Mapping[str, str]
) -> dict[str, Path]:
    """Write every report of a run into ``folder`` and return them by kind.

    A report whose tool did not run this time is not written, and
    ``reset_reports_folder`` removed the earlier run's copy before the run.
    When ``GITHUB_STEP_SUMMARY`` is set, the Markdown summary is also
    appended to that file.
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
        if content is None:
            continue
        written[kind] = write_text(folder / name, json.dumps(content, indent=2) + "\n")

    summary = markdown.build_summary(record, paths)
    written["summary"] = write_text(folder / markdown.FILE_NAME, summary)
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
