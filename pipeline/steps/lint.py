"""lint: flake8 with the project's own configuration."""

from __future__ import annotations

import re
from pathlib import Path

from ..backends.base import Backend, StepOutputCallback
from ..results import Finding, Status, StepResult
from ..spec import ExecResult, StepSpec
from ._context import (
    PROJECT_CACHE_PATH,
    PROJECT_PIP_CACHE,
    REPORTS_PATH,
    SOURCE_PATH,
    Context,
    log_name,
    plural,
    project_cache,
    save_log,
    tail,
    tool_venv,
)

NAME = "lint"
NEEDS: tuple[str, ...] = ()
REPORT = f"{REPORTS_PATH}/flake8.txt"
FILES = (log_name(NAME), Path(REPORT).name)

# flake8's default format: path:row:col: code text
FLAKE8_LINE = re.compile(
    r"^(?P<path>[^\n:]+):(?P<line>\d+):(?P<column>\d+): (?P<code>[A-Z]+\d+) (?P<text>.*)$",
    re.MULTILINE,
)


def describe(ctx: Context) -> StepSpec:
    settings = ctx.settings.lint
    image = settings.image or ctx.settings.image
    # flake8 runs project code (local plugins), so it gets the project's own
    # cache, not the shared tools cache.
    venv, install = tool_venv(image, settings.flake8, root=PROJECT_CACHE_PATH)
    command = [f"{venv}/bin/python", "-m", "flake8", f"--output-file={REPORT}", "--tee"]
    if settings.config:
        command.append(f"--config={settings.config}")
    command += settings.paths
    return StepSpec(
        name=NAME,
        image=image,
        workdir=SOURCE_PATH,
        setup=(("mkdir", "-p", REPORTS_PATH), install),
        commands=(tuple(command),),
        env=(*ctx.common_env(), ("PIP_CACHE_DIR", PROJECT_PIP_CACHE)),
        source=ctx.source(),
        files=ctx.ca_files(),
        caches=(project_cache(ctx.project),),
        outputs=(REPORT,),
    )


def parse_flake8(output: str) -> list[Finding]:
    """Parse flake8's default output format into findings."""
    findings = []
    for match in FLAKE8_LINE.finditer(output):
        path = match["path"].removeprefix("./")
        findings.append(
            Finding(
                tool="flake8",
                rule=match["code"],
                message=match["text"].strip(),
                path=path,
                line=int(match["line"]),
                column=int(match["column"]),
            )
        )
    return findings


def judge(execution: ExecResult) -> StepResult:
    if execution.setup_failed is not None:
        return StepResult(
            NAME,
            Status.FAILED,
            "installing flake8 failed",
            output=tail(execution.setup_failed.output),
        )
    result = execution.results[0]
    report = execution.outputs.get(REPORT)
    # The report file has every finding. The output kept in memory is only
    # its end, so it is parsed only when flake8 wrote no report.
    findings = parse_flake8(_read(report) if report else result.stdout)
    reports = list(execution.outputs.values())
    if result.exit_code == 0 and not findings:
        return StepResult(NAME, Status.PASSED, "no findings", reports=reports)
    if findings:
        summary = plural(len(findings), "finding")
    else:
        summary = f"flake8 failed with exit code {result.exit_code}"
    return StepResult(
        NAME,
        Status.FAILED,
        summary,
        findings=findings,
        output=tail(result.output),
        reports=reports,
    )


def _read(report: Path) -> str:
    return report.read_text(encoding="utf-8", errors="replace")


async def run(ctx: Context, backend: Backend, on_output: StepOutputCallback) -> StepResult:
    spec = describe(ctx)
    execution = await backend.run(spec, ctx.reports_dir, on_output)
    log_path = save_log(ctx, NAME, execution)
    result = judge(execution)
    result.image = spec.image
    result.reports.append(log_path)
    return result
