"""Run records built from the real tool output in tests/data, through the
steps' own judges, as a run on a copy of the example would produce them."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pipeline.config import ScanSettings
from pipeline.results import StepResult
from pipeline.run import RunRecord
from pipeline.spec import BuildOutput, BuildSpec, CommandResult, ExecResult
from pipeline.steps import build, lint, scan, test

DATA = Path(__file__).resolve().parent.parent / "data"
# The tag that the captured image report was scanned under (its RepoTags).
IMAGE = "cap:src-61ba92a504096aea"
IMAGE_ID = "sha256:72b751082c6b1f985cd98e1478c916874068e1ba4f4a8d4cbe7049f553c97a0e"
STARTED = datetime(2026, 12, 4, 15, 51, 40, tzinfo=timezone.utc)
DEFAULT_GATE = ("HIGH", "CRITICAL")


def lint_result(reports: Path) -> StepResult:
    report = reports / "flake8.txt"
    shutil.copy(DATA / "flake8.txt", report)
    command = CommandResult(("flake8",), 1, report.read_text(), "")
    return _timed(lint.judge(ExecResult((command,), {lint.REPORT: report})), 0, 4.1)


def unit_test_result(reports: Path) -> StepResult:
    report = reports / "junit.xml"
    shutil.copy(DATA / "junit-failures.xml", report)
    log = (DATA / "pytest-failures.log").read_text()
    command = CommandResult(("pytest",), 1, log, "")
    execution = ExecResult((command,), {test.REPORT: report})
    return _timed(test.judge(execution, allow_no_tests=False), 0, 5.6)


def build_result(project: Path) -> StepResult:
    (project / "Dockerfile").touch()
    spec = BuildSpec(build.NAME, project, project / "Dockerfile", (IMAGE,))
    output = BuildOutput(0, "", IMAGE_ID, (IMAGE,))
    return _timed(build.judge(spec, output, project), 0, 0.7)


def scan_result(reports: Path, gate: tuple[str, ...] = DEFAULT_GATE) -> StepResult:
    image_report = reports / "trivy-image.json"
    source_report = reports / "trivy-source.json"
    shutil.copy(DATA / "trivy-image-pyyaml.json", image_report)
    shutil.copy(DATA / "trivy-source-token.json", source_report)
    commands = tuple(CommandResult(("trivy",), 0, "", "") for _ in range(3))
    outputs = {scan.IMAGE_REPORT: image_report, scan.SOURCE_REPORT: source_report}
    # model_construct skips validation, which rejects an empty gate; the
    # reports are tested with one, where nothing blocks.
    settings = ScanSettings.model_construct(severity=list(gate))
    result = scan.judge(ExecResult(commands, outputs), settings, IMAGE, True)
    result.image = IMAGE
    return _timed(result, 1, 11.9)


def captured_record(project: Path, gate: tuple[str, ...] = DEFAULT_GATE) -> RunRecord:
    """Return the record of a ``ci`` run with every captured fault planted."""
    project.mkdir(parents=True, exist_ok=True)
    reports = project / ".pipeline" / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    record = RunRecord(
        run_id="0123456789ab",
        project=project.resolve(),
        engine="docker",
        started=STARTED.isoformat(timespec="seconds"),
        reports_dir=reports,
    )
    record.results = [
        lint_result(reports),
        unit_test_result(reports),
        build_result(project),
        scan_result(reports, gate),
    ]
    return record


def _timed(result: StepResult, offset: float, duration: float) -> StepResult:
    result.started = STARTED + timedelta(seconds=offset)
    result.duration = duration
    return result
