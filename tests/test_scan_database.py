"""Without a vulnerability database the scan reports that and fails, unless the
config explicitly allows scanning for secrets and misconfigurations only."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest

from conftest import REGISTRY, RunCli, run_resources

pytestmark = pytest.mark.engine

MISSING_DB = f"{REGISTRY}/no-such-trivy-db:2"


def test_missing_database_fails(engine: docker.DockerClient, example_copy: Path, run_cli: RunCli) -> None:
    result = run_cli("scan", str(example_copy), "--json", env={"PIPELINE_SCAN__DB_REPOSITORY": MISSING_DB})

    assert result.returncode == 1, result.output
    scan = result.step("scan")
    assert scan["status"] == "failed"
    assert "vulnerability database could not be downloaded" in scan["summary"]
    assert MISSING_DB in scan["summary"]
    assert run_resources(engine, result.run_id) == []


def test_missing_database_allowed(engine: docker.DockerClient, example_copy: Path, run_cli: RunCli) -> None:
    env = {
        "PIPELINE_SCAN__DB_REPOSITORY": MISSING_DB,
        "PIPELINE_SCAN__ALLOW_MISSING_VULN_DB": "true",
    }

    result = run_cli("scan", str(example_copy), "--json", env=env)

    assert result.returncode == 0, result.output
    scan = result.step("scan")
    assert scan["status"] == "passed"
    assert "no vulnerability database" in scan["summary"]
    assert scan["details"]["vulnerabilities_scanned"] is False


def test_gate_threshold_and_ignore_unfixed(
    engine: docker.DockerClient, example_copy: Path, run_cli: RunCli
) -> None:
    # The Debian 12 base carries zlib CVE-2023-45853 (CRITICAL, will_not_fix):
    # it fails the gate unless unfixed findings are ignored.
    strict = run_cli(
        "scan", str(example_copy), "--json", env={"PIPELINE_SCAN__IGNORE_UNFIXED": "false"}
    )
    low_gate = run_cli(
        "scan", str(example_copy), "--json",
        env={"PIPELINE_SCAN__IGNORE_UNFIXED": "false", "PIPELINE_SCAN__SEVERITY": "LOW"},
    )

    assert strict.returncode == 1, strict.output
    assert "CVE-2023-45853" in strict.stderr
    assert low_gate.returncode == 0, low_gate.output
    findings = low_gate.step("scan")["findings_list"]
    zlib = [f for f in findings if f["rule"] == "CVE-2023-45853"]
    assert len(zlib) == 1
    assert zlib[0]["blocking"] is False


def test_trivyignore_respected(engine: docker.DockerClient, example_copy: Path, run_cli: RunCli) -> None:
    (example_copy / ".trivyignore").write_text("# accepted until bookworm ships a fix\nCVE-2023-45853\n")

    result = run_cli("scan", str(example_copy), "--json", env={"PIPELINE_SCAN__IGNORE_UNFIXED": "false"})

    assert result.returncode == 0, result.output
    rules = [f["rule"] for f in result.step("scan")["findings_list"]]
    assert "CVE-2023-45853" not in rules


def test_scan_given_image(engine: docker.DockerClient, example_copy: Path, run_cli: RunCli) -> None:
    built = run_cli("build", str(example_copy), "--json")
    image = built.step("build")["image"]

    result = run_cli("scan", str(example_copy), "--image", image, "--json")

    assert result.returncode == 0, result.output
    assert [step["name"] for step in result.record()["steps"]] == ["scan"]
    assert result.step("scan")["image"] == image
