"""The parsers and judges of flake8, pytest, BuildKit and Trivy output, on
real output captured from pipeline runs (see tests/data/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import ScanSettings
from pipeline.errors import ConfigError
from pipeline.results import Status
from pipeline.run import prepare
from pipeline.spec import BuildOutput, BuildSpec, CommandResult, ExecResult
from pipeline.steps import lint, scan, test
from pipeline.steps.build import judge as judge_build
from pipeline.steps.build import parse_build_failure, parse_client_failure
from pipeline.steps.lint import parse_flake8
from pipeline.steps.scan import (
    IMAGE_REPORT,
    IMAGE_TARBALL,
    describe_trivy_failure,
    image_metadata,
    parse_trivy,
)
from pipeline.steps.test import _junit_address, locate_failures, parse_failures, parse_junit

DATA = Path(__file__).resolve().parent.parent / "data"


def test_flake8_finding_fields() -> None:
    findings = parse_flake8((DATA / "flake8.txt").read_text())

    assert len(findings) == 1
    finding = findings[0]
    assert finding.path == "bridge_service/api.py"
    assert finding.line == 1
    assert finding.column == 1
    assert finding.rule == "F401"
    assert finding.message == "'os' imported but unused"
    assert finding.format() == "bridge_service/api.py:1:1: F401 'os' imported but unused"


def test_flake8_ignores_other_lines() -> None:
    output = "some warning from a plugin\n./a.py:10:80: E501 line too long (91 > 79 characters)\n"

    findings = parse_flake8(output)

    assert [(f.path, f.line, f.column, f.rule) for f in findings] == [("a.py", 10, 80, "E501")]


def test_pytest_failures_named() -> None:
    findings = parse_failures((DATA / "pytest-failures.log").read_text())

    ids = [finding.rule for finding in findings]
    assert ids == [
        "tests/test_planted.py::test_planted_failure",
        "tests/test_planted.py::test_planted_error",
    ]
    assert findings[0].message == "assert (1 + 1) == 3"
    assert findings[0].path == "tests/test_planted.py"
    assert findings[1].message == "error"


def test_junit_counts() -> None:
    counts = parse_junit(DATA / "junit-failures.xml")

    assert counts == {"tests": 53, "failures": 1, "errors": 1, "skipped": 0}


def test_build_failure_names_instruction(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "FROM python:3.11-slim\nWORKDIR /app\nCOPY . .\nRUN exit 3\nCMD [\"python\"]\n"
    )

    findings = parse_build_failure(
        (DATA / "build-failure-docker20.log").read_text(), dockerfile, tmp_path
    )

    assert len(findings) == 1
    assert findings[0].path == "Dockerfile"
    assert findings[0].line == 4
    assert findings[0].message.startswith("RUN exit 3: ")
    assert "exit code: 3" in findings[0].message


def test_build_failure_modern_client(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM scratch\nRUN false\n")
    log = (
        "#5 ERROR: process \"/bin/sh -c false\" did not complete successfully: exit code: 1\n"
        "------\n > [2/2] RUN false:\n------\nDockerfile:2\n--------------------\n"
        "   2 | >>> RUN false\n--------------------\n"
        "ERROR: failed to solve: process \"/bin/sh -c false\" did not complete "
        "successfully: exit code: 1\n"
    )

    findings = parse_build_failure(log, dockerfile, tmp_path)

    assert findings[0].line == 2
    assert findings[0].message.startswith("RUN false: failed to solve")


def load(name: str) -> dict[str, object]:
    data = json.loads((DATA / name).read_text())
    assert isinstance(data, dict)
    return data


def test_trivy_image_vulnerabilities() -> None:
    findings = parse_trivy(load("trivy-image-pyyaml.json"), {"HIGH", "CRITICAL"}, "svc:1")

    by_rule = {finding.rule: finding for finding in findings}
    pyyaml = by_rule["CVE-2020-14343"]
    assert pyyaml.severity == "CRITICAL"
    assert pyyaml.blocking
    assert pyyaml.package == "PyYAML"
    assert pyyaml.installed_version == "5.3.1"
    assert pyyaml.fixed_version == "5.4"
    assert pyyaml.path is not None and pyyaml.path.startswith("svc:1:usr/local/lib/")
    zlib = by_rule["CVE-2023-45853"]
    assert zlib.package == "zlib1g"
    assert zlib.fixed_version is None
    assert zlib.path == "svc:1 (debian 12.15)"
    assert IMAGE_TARBALL not in (zlib.path or "")


def test_trivy_gate_below_threshold() -> None:
    findings = parse_trivy(load("trivy-image-pyyaml.json"), {"LOW"}, "svc:1")

    assert findings
    assert not any(finding.blocking for finding in findings)


def test_trivy_source_secret() -> None:
    findings = parse_trivy(load("trivy-source-token.json"), {"CRITICAL"})

    secrets = [finding for finding in findings if finding.rule == "github-pat"]
    assert len(secrets) == 1
    assert secrets[0].path == "bridge_service/credentials.py"
    assert secrets[0].line == 1
    assert secrets[0].severity == "CRITICAL"
    assert "ghp_" not in secrets[0].message


@pytest.mark.parametrize(
    ("report", "expected"),
    [({}, []), ({"Results": None}, []), ({"Results": [{"Target": "x"}]}, [])],
    ids=["empty", "null-results", "clean-target"],
)
def test_trivy_empty_reports(report: dict[str, object], expected: list[object]) -> None:
    assert parse_trivy(report, {"HIGH"}) == expected


def test_pytest_failures_located() -> None:
    findings = parse_failures((DATA / "pytest-failures.log").read_text())

    located = locate_failures(findings, DATA / "junit-failures.xml")

    assert [(finding.path, finding.line) for finding in located] == [
        ("tests/test_planted.py", 2),
        ("tests/test_planted.py", 5),
    ]


@pytest.mark.parametrize(
    ("nodeid", "classname", "name"),
    [
        ("tests/test_x.py::test_y", "tests.test_x", "test_y"),
        ("tests/test_x.py::TestA::test_b", "tests.test_x.TestA", "test_b"),
        ("test_x.py::test_p[a::b-1.5]", "test_x", "test_p[a::b-1.5]"),
    ],
)
def test_junit_address_matches_pytest(nodeid: str, classname: str, name: str) -> None:
    assert _junit_address(nodeid) == (classname, name)


def test_trivy_vulnerability_details() -> None:
    findings = parse_trivy(load("trivy-image-pyyaml.json"), {"CRITICAL"}, "svc:1")

    pyyaml = next(finding for finding in findings if finding.rule == "CVE-2020-14343")
    assert pyyaml.image == "svc:1"
    assert pyyaml.category == "vulnerability"
    assert pyyaml.title == "Improper Input Validation in PyYAML"
    assert pyyaml.url == "https://avd.aquasec.com/nvd/cve-2020-14343"
    assert pyyaml.score == 9.8


def test_trivy_source_findings_not_in_image() -> None:
    findings = parse_trivy(load("trivy-source-token.json"), {"CRITICAL"})

    assert [(finding.image, finding.category) for finding in findings] == [(None, "secret")]
    assert findings[0].title == "GitHub Personal Access Token"
    assert findings[0].score is None


def test_trivy_image_metadata() -> None:
    metadata = image_metadata(load("trivy-image-pyyaml.json"))

    assert metadata == {
        "image_id": "sha256:72b751082c6b1f985cd98e1478c916874068e1ba4f4a8d4cbe7049f553c97a0e",
        "operating_system": "debian:12.15",
        "trivy_version": "0.76.0",
    }


# The docker client 20.10 on an invalid tag: it fails before BuildKit starts.
CLIENT_FAILURE = (
    'invalid argument "Bad_Name:src-0123" for "-t, --tag" flag: invalid reference '
    "format: repository name must be lowercase\nSee 'docker build --help'.\n"
)


def test_build_client_failure_message() -> None:
    [finding] = parse_client_failure(CLIENT_FAILURE)

    assert finding.message.startswith('invalid argument "Bad_Name:src-0123"')
    assert finding.message.endswith("repository name must be lowercase")
    assert finding.path is None
    assert finding.tool == "docker"


def test_build_client_failure_error_line() -> None:
    log = 'ERROR: invalid tag "Bad_Name:1": repository name must be lowercase\n'

    [finding] = parse_client_failure(log)

    assert finding.message == 'invalid tag "Bad_Name:1": repository name must be lowercase'


def test_build_judge_blames_client(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM scratch\n")
    spec = BuildSpec("build", tmp_path, dockerfile, ("Bad_Name:1",))
    output = BuildOutput(1, CLIENT_FAILURE, None, spec.tags, builder_started=False)

    result = judge_build(spec, output, tmp_path)

    assert result.status is Status.FAILED
    assert "invalid reference format" in result.summary
    assert "--help" not in result.summary
    assert result.findings[0].path is None


TRIVY = "/opt/pipeline-tools/trivy-0123/bin/trivy"


@pytest.mark.parametrize(
    ("command", "name"),
    [
        ((TRIVY, "image", "--cache-dir", "/c", "--input", "/work/image.tar"), "trivy image"),
        ((TRIVY, "fs", "--cache-dir", "/c", "/src"), "trivy fs"),
        ((TRIVY, "image", "--download-db-only", "--cache-dir", "/c"), "trivy database download"),
    ],
    ids=["image", "fs", "database"],
)
def test_trivy_failure_named(command: tuple[str, ...], name: str) -> None:
    output = (
        "2026-12-04T16:53:55Z\tINFO\t[vulndb] Need to update DB\n"
        "2026-12-04T16:53:55Z\tFATAL\tFatal error\trun error: init error: DB error: "
        "database error: --skip-db-update cannot be specified on the first run\n"
    )
    result = CommandResult(command, 1, "", output)

    summary = describe_trivy_failure(result)

    assert summary == (
        f"{name} failed with exit code 1: run error: init error: DB error: database "
        "error: --skip-db-update cannot be specified on the first run"
    )


def test_trivy_flag_error_named() -> None:
    output = 'Error: invalid argument "abc" for "--timeout" flag: time: invalid duration "abc"\n'
    result = CommandResult((TRIVY, "fs", "--timeout", "abc"), 1, "", output)

    summary = describe_trivy_failure(result)

    assert summary.startswith('trivy fs failed with exit code 1: invalid argument "abc"')


def test_trivy_judge_names_failure() -> None:
    failed = CommandResult(
        (TRIVY, "image", "--cache-dir", "/c"),
        1,
        "",
        "2026-12-04T16:53:53Z\tFATAL\tFatal error\tinvalid argument\n",
    )
    result = scan.judge(ExecResult((failed,), {}), ScanSettings(), "svc:1", True)

    assert result.summary == "trivy image failed with exit code 1: invalid argument"


def test_trivy_fixed_version_in_message() -> None:
    findings = parse_trivy(load("trivy-image-pyyaml.json"), {"CRITICAL"}, "svc:1")

    by_rule = {finding.rule: finding for finding in findings}
    assert by_rule["CVE-2020-14343"].message == (
        "PyYAML 5.3.1: Improper Input Validation in PyYAML (fixed in 5.4)"
    )
    assert "fixed in" not in by_rule["CVE-2023-45853"].message


def vulnerability(identifier: str, severity: str) -> dict[str, str]:
    return {
        "VulnerabilityID": identifier,
        "PkgName": "zlib1g",
        "InstalledVersion": "1:1.2.13.dfsg-1",
        "Severity": severity,
    }


@pytest.mark.parametrize(
    ("severities", "summary"),
    [(["HIGH", "LOW"], "1 finding at HIGH"), (["HIGH", "HIGH"], "2 findings at HIGH")],
    ids=["one", "several"],
)
def test_scan_summary_counts_findings(
    tmp_path: Path, severities: list[str], summary: str
) -> None:
    vulnerabilities = [
        vulnerability(f"CVE-2026-{index}", severity)
        for index, severity in enumerate(severities)
    ]
    report = {"Results": [{"Target": IMAGE_TARBALL, "Vulnerabilities": vulnerabilities}]}
    path = tmp_path / "trivy-image.json"
    path.write_text(json.dumps(report))
    commands = tuple(CommandResult((TRIVY,), 0, "", "") for _ in range(2))
    settings = ScanSettings(severity=["HIGH"])

    result = scan.judge(ExecResult(commands, {IMAGE_REPORT: path}), settings, "svc:1", True)

    assert result.summary.startswith(summary)


def test_lint_reads_report_file(tmp_path: Path) -> None:
    report = tmp_path / "flake8.txt"
    report.write_text((DATA / "flake8.txt").read_text())
    # The output kept in memory is only the end of flake8's output.
    command = CommandResult(("flake8",), 1, "", "", truncated=True)

    result = lint.judge(ExecResult((command,), {lint.REPORT: report}))

    assert result.summary == "1 finding"
    assert [finding.rule for finding in result.findings] == ["F401"]


def test_junit_corrupt_judged(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    junit.write_text("<testsuites><testsuite")
    log = (DATA / "pytest-failures.log").read_text()
    execution = ExecResult((CommandResult(("pytest",), 1, log, ""),), {test.REPORT: junit})

    result = test.judge(execution, allow_no_tests=False)

    assert result.status is Status.FAILED
    assert result.summary.startswith("pytest failed with exit code 1 (junit.xml is not")
    assert "counts" not in result.details
    assert len(result.findings) == 2


@pytest.mark.parametrize(
    ("exit_code", "summary"),
    [
        (124, "pytest timed out after 30 s (setting test.timeout)"),
        (137, "pytest was killed with SIGKILL"),
    ],
    ids=["timed-out", "killed"],
)
def test_timeout_judged(exit_code: int, summary: str) -> None:
    execution = ExecResult((CommandResult(("timeout",), exit_code, "", ""),), {})

    result = test.judge(execution, allow_no_tests=False, timeout=30)

    assert result.status is Status.FAILED
    assert result.summary.startswith(summary)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty sample project, read without the developer's user config."""
    user_config = tmp_path / "user-config.toml"
    user_config.write_text("")
    monkeypatch.setenv("PIPELINE_USER_CONFIG", str(user_config))
    root = tmp_path / "project"
    root.mkdir()
    (root / "requirements.txt").write_text("")
    return root


def test_timeout_wraps_pytest(project: Path) -> None:
    ctx = prepare(project).context

    [command] = test.describe(ctx).commands

    assert command[:3] == ("timeout", "--kill-after=30", str(test.timeout_seconds(ctx)))
    assert command[4:6] == ("-m", "pytest")


def test_native_traceback_located(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite tests="1" failures="1" errors="0" skipped="0">'
        '<testcase classname="tests.test_x" name="test_bad"><failure message="boom">'
        'Traceback (most recent call last):\n'
        '  File "/usr/lib/python3/site-packages/_pytest/runner.py", line 341, in from_call\n'
        '  File "/src/tests/test_x.py", line 7, in test_bad\n'
        "    assert value == 2\nAssertionError: boom</failure></testcase>"
        "</testsuite></testsuites>"
    )
    findings = parse_failures("FAILED tests/test_x.py::test_bad - AssertionError: boom\n")

    [located] = locate_failures(findings, junit)

    assert located.line == 7
    assert located.format() == "tests/test_x.py:7: tests/test_x.py::test_bad AssertionError: boom"


def test_ignorefile_link_inside_followed(project: Path) -> None:
    (project / "security").mkdir()
    (project / "security" / "ignore").write_text("CVE-2023-45853\n")
    (project / ".trivyignore").symlink_to("security/ignore")

    found = scan.find_ignorefile(prepare(project).context)

    assert found == project / "security" / "ignore"


@pytest.mark.parametrize("linked", [".trivyignore", "conf"], ids=["file", "folder"])
def test_ignorefile_link_outside_rejected(
    project: Path, tmp_path: Path, linked: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "ignore").write_text("CVE-2023-45853\n")
    if linked == "conf":
        (project / "conf").symlink_to(outside, target_is_directory=True)
        (project / "pipeline.toml").write_text("[scan]\nignorefile = 'conf/ignore'\n")
    else:
        (project / ".trivyignore").symlink_to(outside / "ignore")

    # Loading the settings may reject the path already.
    with pytest.raises(ConfigError, match="outside the project"):
        scan.find_ignorefile(prepare(project).context)


def test_ignorefile_folder_rejected(project: Path) -> None:
    (project / ".trivyignore").mkdir()

    with pytest.raises(ConfigError, match="is a folder"):
        scan.find_ignorefile(prepare(project).context)


def test_ignorefile_missing_is_none(project: Path) -> None:
    assert scan.find_ignorefile(prepare(project).context) is None
