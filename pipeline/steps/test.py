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
    PROJECT_CACHE_PATH,
    PROJECT_PIP_CACHE,
    REPORTS_PATH,
    SOURCE_PATH,
    Context,
    cached_venv,
    log_name,
    project_cache,
    save_log,
    tail,
)

NAME = "test"
NEEDS: tuple[str, ...] = ()
REPORT = f"{REPORTS_PATH}/junit.xml"
FILES = (log_name(NAME), Path(REPORT).name)
# The project is installed here, outside the cached virtualenv.
PROJECT_SITE = "/tmp/pipeline-project"
# The default of the test.timeout setting, in seconds.
DEFAULT_TIMEOUT = 3600
# coreutils timeout sends SIGTERM at the timeout and SIGKILL this many
# seconds later, for a pytest that ignores SIGTERM.
KILL_AFTER = 30

# pytest exit codes (pytest.ExitCode)
EXIT_OK = 0
EXIT_TESTS_FAILED = 1
EXIT_NO_TESTS = 5
# coreutils timeout's exit codes: the command timed out, or was killed with
# SIGKILL (128 + 9), which --kill-after sends when SIGTERM did not end it.
EXIT_TIMED_OUT = 124
EXIT_KILLED = 137

# The short summary that -rfE prints: "FAILED tests/test_x.py::test_y - msg"
SUMMARY_LINE = re.compile(
    r"^(?P<kind>FAILED|ERROR) (?P<nodeid>\S+)(?: - (?P<message>.*))?$", re.MULTILINE
)


def timeout_seconds(ctx: Context) -> int:
    """Return the test.timeout setting, in seconds."""
    # NOTE: getattr keeps this working with settings that have no
    # test.timeout yet.
    return int(getattr(ctx.settings.test, "timeout", DEFAULT_TIMEOUT))


def describe(ctx: Context) -> StepSpec:
    """Describe the test step.

    The dependencies and pytest go into a virtualenv in the project's own
    cache volume, keyed by the requirements files, so a run after a source
    change installs nothing. When a requirements file installs from the
    project tree (``-e .``), the dependencies are installed into the step's
    image on each run instead. The project itself is installed on each run,
    since it is the source under test. pytest runs under coreutils
    ``timeout`` with the test.timeout setting.
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
    env = [*ctx.common_env(), ("PIP_CACHE_DIR", PROJECT_PIP_CACHE)]
    fingerprint = project.requirements_fingerprint()
    if fingerprint is not None:
        key = "\0".join([image, fingerprint, *project.declared_dependencies, settings.pytest])
        venv, create = cached_venv("test-deps", key, installs, root=PROJECT_CACHE_PATH)
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
        "timeout",
        f"--kill-after={KILL_AFTER}",
        str(timeout_seconds(ctx)),
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
        caches=(project_cache(project),),
        outputs=(REPORT,),
    )


def parse_junit(path: Path) -> dict[str, int]:
    """Count tests, failures, errors and skips in a JUnit XML report.

    Raises ElementTree.ParseError when the file is not well-formed XML.
    """
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
    """Add each failed test's line, taken from its traceback in the JUnit report.

    Raises ElementTree.ParseError when the report is not well-formed XML.
    """
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
    """Find the last line of a test file that a traceback names.

    pytest ends a failure with ``tests/test_x.py:12: AssertionError`` and a
    setup error with ``/src/tests/test_x.py:12``. Python's own format, used
    by ``--tb=native`` and for a syntax error at collection, names it as
    ``File "/src/tests/test_x.py", line 12``.
    """
    file = rf"(?:{re.escape(SOURCE_PATH)}/)?{re.escape(path)}"
    pattern = rf'^{file}:(\d+)(?::|\s*$)|File "{file}", line (\d+)'
    lines = [
        int(pytest_line or native_line)
        for pytest_line, native_line in re.findall(pattern, traceback, re.MULTILINE)
    ]
    return lines[-1] if lines else None


def judge(
    execution: ExecResult, allow_no_tests: bool, timeout: int = DEFAULT_TIMEOUT
) -> StepResult:
    if execution.setup_failed is not None:
        output = execution.setup_failed.output
        errors = [line for line in output.splitlines() if line.startswith("ERROR:")]
        summary = "installing dependencies failed"
        if errors:
            summary += ": " + errors[0].removeprefix("ERROR:").strip()
        return StepResult(NAME, Status.FAILED, summary, output=tail(output))
    result = execution.results[0]
    reports = list(execution.outputs.values())
    junit = reports[0] if reports else None
    counts, junit_error = _read_counts(junit)
    details: dict[str, object] = {"counts": counts} if counts else {}
    note = ""
    if junit_error is not None:
        details["junit_error"] = junit_error
        note = f" ({junit_error})"

    if result.exit_code in (EXIT_TIMED_OUT, EXIT_KILLED):
        if result.exit_code == EXIT_TIMED_OUT:
            summary = f"pytest timed out after {timeout} s (setting test.timeout)"
        else:
            summary = (
                f"pytest was killed with SIGKILL: it ignored SIGTERM at the "
                f"{timeout} s timeout (setting test.timeout), or ran out of memory"
            )
        return StepResult(
            NAME,
            Status.FAILED,
            summary + note,
            output=tail(result.output),
            reports=reports,
            details=details,
        )
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
    if junit is not None and junit_error is None:
        findings = locate_failures(findings, junit)
    if result.exit_code == EXIT_OK:
        passed = counts["tests"] - counts["skipped"] if counts else 0
        summary = f"{passed} passed" if counts else "passed"
        if counts and counts["skipped"]:
            summary += f", {counts['skipped']} skipped"
        return StepResult(
            NAME, Status.PASSED, summary + note, reports=reports, details=details
        )
    if result.exit_code == EXIT_TESTS_FAILED and counts:
        summary = f"{counts['failures'] + counts['errors']} of {counts['tests']} failed"
    else:
        summary = f"pytest failed with exit code {result.exit_code}"
    return StepResult(
        NAME,
        Status.FAILED,
        summary + note,
        findings=findings,
        output=tail(result.output),
        reports=reports,
        details=details,
    )


def _read_counts(junit: Path | None) -> tuple[dict[str, int] | None, str | None]:
    """Return the JUnit report's counts, or None and why the report is unusable."""
    if junit is None:
        return None, None
    try:
        return parse_junit(junit), None
    except (ElementTree.ParseError, ValueError) as exc:
        return None, f"{junit.name} is not a valid JUnit report: {exc}"


async def run(ctx: Context, backend: Backend, on_output: StepOutputCallback) -> StepResult:
    spec = describe(ctx)
    execution = await backend.run(spec, ctx.reports_dir, on_output)
    log_path = save_log(ctx, NAME, execution)
    result = judge(execution, ctx.settings.test.allow_no_tests, timeout_seconds(ctx))
    result.image = spec.image
    result.reports.append(log_path)
    return result
