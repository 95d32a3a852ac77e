"""test: install the project's dependencies and run pytest with a JUnit report."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from dataclasses import replace
from pathlib import Path

from ..backends.base import Backend, StepOutputCallback
from ..results import Finding, Status, StepResult
from ..spec import ExecResult, StepSpec
from ._context import (
    PIP_CACHE,
    REPORTS_PATH,
    SOURCE_PATH,
    TOOLS_CACHE,
    Context,
    cached_venv,
    save_log,
    tail,
)

NAME = "test"
NEEDS: tuple[str, ...] = ()
REPORT = f"{REPORTS_PATH}/junit.xml"
# The project is installed here, outside the shared cached virtualenv.
PROJECT_SITE = "/tmp/pipeline-project"

# pytest exit codes (pytest.ExitCode)
EXIT_OK = 0
EXIT_TESTS_FAILED = 1
EXIT_NO_TESTS = 5

# The short summary that -rfE prints: "FAILED tests/test_x.py::test_y - msg"
SUMMARY_LINE = re.compile(
    r"^(?P<kind>FAILED|ERROR) (?P<nodeid>\S+)(?: - (?P<message>.*))?$", re.MULTILINE
)


def describe(ctx: Context) -> StepSpec:
    """Describe the test step.

    The dependencies and pytest go into a virtualenv in the tools cache,
    keyed by the requirements files, so a run after a source change installs
    nothing. When a requirements file installs from the project tree
    (``-e .``), the dependencies are installed into the step's image on each
    run instead. The project itself is installed on each run, since it is
    the source under test.
    """
    settings = ctx.settings.test
    project = ctx.project
    image = settings.image or ctx.settings.image
    installs: list[tuple[str, ...]] = [
        ("-r", requirements) for requirements in project.requirement_files
    ]
    if settings.install_project and project.declared_dependencies:
        installs.append(project.declared_dependencies)
    installs.append((settings.pytest,))

    setup: list[tuple[str, ...]] = [("mkdir", "-p", REPORTS_PATH)]
    env = list(ctx.common_env())
    fingerprint = project.requirements_fingerprint()
    if fingerprint is not None:
        key = "\0".join([image, fingerprint, *project.declared_dependencies, settings.pytest])
        venv, create = cached_venv("test-deps", key, installs)
        python = f"{venv}/bin/python"
        setup.append(create)
        if settings.install_project and project.is_installable:
            setup.append(
                (python, "-m", "pip", "install", "--quiet", "--no-deps",
                 "--target", PROJECT_SITE, ".")
            )
            env.append(("PYTHONPATH", PROJECT_SITE))
    else:
        python = "python"
        pip = (python, "-m", "pip", "install", "--quiet")
        setup += [(*pip, *arguments) for arguments in installs]
        if settings.install_project and project.is_installable:
            setup.append((*pip, "--no-deps", "."))

    command = (
        python,
        "-m",
        "pytest",
        f"--junitxml={REPORT}",
        "-o",
        "junit_family=xunit2",
        "-rfE",
        "-p",
        "no:cacheprovider",
        *settings.args,
    )
    return StepSpec(
        name=NAME,
        image=image,
        workdir=SOURCE_PATH,
        setup=tuple(setup),
        commands=(command,),
        env=tuple(env),
        source=ctx.source(),
        files=ctx.ca_files(),
        caches=(PIP_CACHE, TOOLS_CACHE),
        outputs=(REPORT,),
    )


def parse_junit(path: Path) -> dict[str, int]:
    """Count tests, failures, errors and skips in a JUnit XML report."""
    root = ElementTree.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
    return counts


def parse_failures(output: str) -> list[Finding]:
    """Turn pytest's short test summary into one finding per failed test."""
    findings = []
    for match in SUMMARY_LINE.finditer(output):
        nodeid = match["nodeid"]
        findings.append(
            Finding(
                tool="pytest",
                rule=nodeid,
                message=(match["message"] or match["kind"].lower()).strip(),
                path=nodeid.split("::", 1)[0],
            )
        )
    return findings


def locate_failures(findings: list[Finding], junit: Path) -> list[Finding]:
    """Add each failed test's line, taken from its traceback in the JUnit report."""
    tracebacks: dict[tuple[str, str], str] = {}
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        for outcome in case:
            if outcome.tag in ("failure", "error"):
                address = (case.get("classname", ""), case.get("name", ""))
                text = (outcome.text or "") + "\n" + outcome.get("message", "")
                tracebacks[address] = text
    located = []
    for finding in findings:
        traceback = tracebacks.get(_junit_address(finding.rule))
        line = None
        if traceback and finding.path:
            line = _last_line_in(traceback, finding.path)
        located.append(replace(finding, line=line) if line else finding)
    return located


def _junit_address(nodeid: str) -> tuple[str, str]:
    """Return the classname and name that pytest's JUnit XML gives a node ID.

    This reverses pytest's ``mangle_test_address`` (src/_pytest/junitxml.py):
    the file path becomes a dotted module path and parameters stay on the name.
    """
    path, bracket, parameters = nodeid.partition("[")
    names = path.split("::")
    names[0] = re.sub(r"\.py$", "", names[0].replace("/", "."))
    names[-1] += bracket + parameters
    return ".".join(names[:-1]), names[-1]


def _last_line_in(traceback: str, path: str) -> int | None:
    """Find the last ``path:line`` of a test file in a traceback.

    pytest ends a failure with ``tests/test_x.py:12: AssertionError`` and a
    setup error with ``/src/tests/test_x.py:12``.
    """
    pattern = rf"^(?:{re.escape(SOURCE_PATH)}/)?{re.escape(path)}:(\d+)(?::|\s*$)"
    matches = re.findall(pattern, traceback, re.MULTILINE)
    return int(matches[-1]) if matches else None


def judge(execution: ExecResult, allow_no_tests: bool) -> StepResult:
    if execution.setup_failed is not None:
        output = execution.setup_failed.output
        errors = [line for line in output.splitlines() if line.startswith("ERROR:")]
        summary = "installing dependencies failed"
        if errors:
            summary += ": " + errors[0].removeprefix("ERROR:").strip()
        return StepResult(NAME, Status.FAILED, summary, output=tail(output))
    result = execution.results[0]
    reports = list(execution.outputs.values())
    counts = parse_junit(reports[0]) if reports else None
    details: dict[str, object] = {"counts": counts} if counts else {}

    if result.exit_code == EXIT_NO_TESTS:
        status = Status.PASSED if allow_no_tests else Status.FAILED
        return StepResult(
            NAME,
            status,
            "no tests collected"
            + ("" if allow_no_tests else " (set test.allow_no_tests to accept)"),
            output=tail(result.output),
            reports=reports,
            details=details,
        )
    findings = parse_failures(result.stdout)
    if reports:
        findings = locate_failures(findings, reports[0])
    if result.exit_code == EXIT_OK:
        passed = counts["tests"] - counts["skipped"] if counts else 0
        summary = f"{passed} passed" if counts else "passed"
        if counts and counts["skipped"]:
            summary += f", {counts['skipped']} skipped"
        return StepResult(NAME, Status.PASSED, summary, reports=reports, details=details)
    if result.exit_code == EXIT_TESTS_FAILED and counts:
        summary = f"{counts['failures'] + counts['errors']} of {counts['tests']} failed"
    else:
        summary = f"pytest failed with exit code {result.exit_code}"
    return StepResult(
        NAME,
        Status.FAILED,
        summary,
        findings=findings,
        output=tail(result.output),
        reports=reports,
        details=details,
    )


async def run(ctx: Context, backend: Backend, on_output: StepOutputCallback) -> StepResult:
    spec = describe(ctx)
    execution = await backend.run(spec, ctx.reports_dir, on_output)
    log_path = save_log(ctx, NAME, execution)
    result = judge(execution, ctx.settings.test.allow_no_tests)
    result.image = spec.image
    result.reports.append(log_path)
    return result
