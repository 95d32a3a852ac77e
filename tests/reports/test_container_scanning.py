"""GitLab's container scanning report from the captured Trivy image report,
with the fields of security report schema 15.x checked explicitly."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from pipeline.reports.container_scanning import build_container_scanning

from .captured import IMAGE, captured_record

SEVERITIES = {"Info", "Unknown", "Low", "Medium", "High", "Critical"}
TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")
SCANNER_ID = re.compile(r"^[a-z0-9-]+$")


def report_of(project: Path, gate: tuple[str, ...] = ("HIGH", "CRITICAL")) -> dict[str, Any]:
    report = build_container_scanning(captured_record(project, gate).results)
    assert report is not None
    return report


def test_container_scanning_scan_fields(tmp_path: Path) -> None:
    report = report_of(tmp_path / "project")

    assert report["version"].startswith("15.")
    scan = report["scan"]
    assert scan["type"] == "container_scanning"
    assert scan["status"] == "success"
    assert TIME.match(scan["start_time"])
    assert TIME.match(scan["end_time"])
    assert scan["start_time"] == "2026-12-04T15:51:41"
    assert scan["end_time"] == "2026-12-04T15:51:52"
    for tool in (scan["analyzer"], scan["scanner"]):
        assert SCANNER_ID.match(tool["id"])
        assert tool["name"]
        assert tool["version"]
        assert tool["vendor"]["name"]
    assert scan["scanner"]["id"] == "trivy"
    assert scan["scanner"]["version"] == "0.76.0"


def test_container_scanning_vulnerability_fields(tmp_path: Path) -> None:
    vulnerabilities = report_of(tmp_path / "project")["vulnerabilities"]

    assert len(vulnerabilities) == 2
    for vulnerability in vulnerabilities:
        assert vulnerability["id"]
        assert vulnerability["severity"] in SEVERITIES
        assert len(vulnerability["name"]) <= 255
        assert vulnerability["identifiers"]
        for identifier in vulnerability["identifiers"]:
            assert identifier["type"]
            assert identifier["name"]
            assert identifier["value"]
        location = vulnerability["location"]
        assert location["dependency"]["package"]["name"]
        assert location["dependency"]["version"]
        assert location["operating_system"] == "debian:12.15"
        assert location["image"] == IMAGE
    ids = [vulnerability["id"] for vulnerability in vulnerabilities]
    assert len(set(ids)) == len(ids)


def test_container_scanning_pyyaml_entry(tmp_path: Path) -> None:
    vulnerabilities = report_of(tmp_path / "project")["vulnerabilities"]

    pyyaml = next(v for v in vulnerabilities if v["name"] == "Improper Input Validation in PyYAML")
    assert pyyaml["severity"] == "Critical"
    assert pyyaml["solution"] == "Upgrade PyYAML to 5.4"
    assert pyyaml["location"]["dependency"] == {"package": {"name": "PyYAML"}, "version": "5.3.1"}
    assert pyyaml["identifiers"] == [
        {
            "type": "cve",
            "name": "CVE-2020-14343",
            "value": "CVE-2020-14343",
            "url": "https://avd.aquasec.com/nvd/cve-2020-14343",
        }
    ]


def test_container_scanning_ids_stable(tmp_path: Path) -> None:
    first = [v["id"] for v in report_of(tmp_path / "one")["vulnerabilities"]]
    second = [v["id"] for v in report_of(tmp_path / "two")["vulnerabilities"]]

    assert first == second


def test_container_scanning_skips_secrets(tmp_path: Path) -> None:
    vulnerabilities = report_of(tmp_path / "project")["vulnerabilities"]

    names = {identifier["name"] for v in vulnerabilities for identifier in v["identifiers"]}
    assert names == {"CVE-2023-45853", "CVE-2020-14343"}


@pytest.mark.parametrize("gate", [("LOW",), ()], ids=["low", "none"])
def test_ignored_findings_keep_severity(tmp_path: Path, gate: tuple[str, ...]) -> None:
    vulnerabilities = report_of(tmp_path / "project", gate)["vulnerabilities"]

    # Both CVEs are CRITICAL in Trivy's report: below the gate they are
    # still listed, at their own severity and never above it.
    assert [v["severity"] for v in vulnerabilities] == ["Critical", "Critical"]


def test_no_report_without_database(tmp_path: Path) -> None:
    record = captured_record(tmp_path / "project")
    record.results[3].details["vulnerabilities_scanned"] = False

    assert build_container_scanning(record.results) is None


def test_no_report_without_scan(tmp_path: Path) -> None:
    record = captured_record(tmp_path / "project")

    assert build_container_scanning(record.results[:3]) is None
