"""The library entry point that the CLI and the Dagger module call."""

from __future__ import annotations

import json
import logging
import os
import platform
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__
from .backends.base import Backend
from .config import Settings, load_settings, resolve_ca_bundle
from .graph import StepEvent, plan, run_graph
from .project import Project
from .reports import (
    RECORD_FILE_NAME,
    image_summary,
    reset_reports_folder,
    write_reports,
)
from .reports._files import check_folder, write_text
from .results import StepResult, finding_to_dict
from .secrets import Redactor
from .steps import Context
from .steps import build as build_step
from .steps import scan as scan_step

log = logging.getLogger(__name__)


@dataclass
class RunRecord:
    """The outcome of one run, as written to run.json and printed by --json."""

    run_id: str
    project: Path
    engine: str
    started: str
    results: list[StepResult] = field(default_factory=list)
    reports_dir: Path | None = None
    interrupted: bool = False
    # The report files of write_reports, by kind.
    reports: dict[str, Path] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(result.ok for result in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "tool_version": __version__,
            "project": str(self.project),
            "engine": self.engine,
            "started": self.started,
            "status": "passed" if self.ok else "failed",
            "interrupted": self.interrupted,
            "host": platform.node(),
            "image": image_summary(self.results),
            "reports": {kind: str(path) for kind, path in self.reports.items()},
            "steps": [
                dict(
                    result.to_dict(),
                    findings_list=[finding_to_dict(f) for f in result.findings],
                )
                for result in self.results
            ],
        }


@dataclass
class Prepared:
    project: Project
    settings: Settings
    context: Context
    record: RunRecord
    redactor: Redactor


def prepare(
    path: Path,
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    engine: str = "docker",
) -> Prepared:
    """Open the project and load its settings; raises before anything runs."""
    project = Project.open(path)
    settings = load_settings(project.path, config_file, overrides).settings
    reports_dir = project.path / settings.reports_dir
    check_folder(project.path, reports_dir)
    # Reopened with its reports folder, which then never counts as a change
    # to the source (no "-dirty" tags from the run's own reports).
    project = Project(project.path, reports_dir=reports_dir)
    ctx = Context(project, settings, reports_dir, resolve_ca_bundle(settings, project.path))
    record = RunRecord(
        run_id=uuid.uuid4().hex[:12],
        project=project.path,
        engine=engine,
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        reports_dir=reports_dir,
    )
    return Prepared(project, settings, ctx, record, Redactor())


async def execute(
    prepared: Prepared, steps: list[str], backend: Backend, on_event: StepEvent
) -> RunRecord:
    """Run the named steps (plus what they need) and return the run's record.

    Before any step starts, this checks the Dockerfile, the reports folder
    and what the backend needs (``Backend.preflight``), raising UsageError
    on a problem, and removes the files of an earlier run from the reports
    folder.
    """
    ctx = prepared.context
    selected = plan(steps)
    if ctx.image is not None:
        selected = [step for step in selected if step.name != build_step.NAME]
    if any(step.name == build_step.NAME for step in selected):
        build_step.describe(ctx)  # checks the Dockerfile before anything starts
    if any(step.name == scan_step.NAME for step in selected):
        scan_step.find_ignorefile(ctx)  # checks the Trivy ignore file
    check_folder(ctx.project.path, ctx.reports_dir)
    await backend.preflight([step.name for step in selected], ctx.image)
    reset_reports_folder(ctx.project.path, ctx.reports_dir)
    prepared.record.results = await run_graph(selected, ctx, backend, on_event)
    return prepared.record


def write_record(
    record: RunRecord, environ: Mapping[str, str] | None = None
) -> Path | None:
    """Write the run's reports, then run.json, which lists them."""
    if record.reports_dir is None:
        return None
    check_folder(record.project, record.reports_dir)
    record.reports_dir.mkdir(parents=True, exist_ok=True)
    record.reports = write_reports(
        record, record.reports_dir, os.environ if environ is None else environ
    )
    path = record.reports_dir / RECORD_FILE_NAME
    return write_text(path, json.dumps(record.to_dict(), indent=2) + "\n")
