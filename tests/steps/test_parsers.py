"""The parsers of flake8, pytest, BuildKit and Trivy output, on real output
captured from pipeline runs (see tests/data/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.steps.build import parse_build_failure
from pipeline.steps.lint import parse_flake8
from pipeline.steps.scan import IMAGE_TARBALL, image_metadata, parse_trivy
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
