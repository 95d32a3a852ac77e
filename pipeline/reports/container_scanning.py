"""GitLab's container scanning report (security report schema 15.x) from Trivy.

Only vulnerabilities of packages in the image go in, since the format locates
each one by package, version, operating system and image. Secrets and
misconfigurations are in the SARIF file and the run record. A finding below
the severity gate keeps its own severity, which never exceeds what Trivy gave.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from .. import __version__
from ..results import Finding, StepResult
from ._common import find_step, produced

FILE_NAME = "gl-container-scanning-report.json"
# NOTE: the fields follow GitLab's documentation. No test validates them
# against the JSON schema of this version.
SCHEMA_VERSION = "15.0.7"
# The schema's start_time and end_time are UTC without an offset.
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
SEVERITIES = {
    "CRITICAL": "Critical",
    "HIGH": "High",
    "MEDIUM": "Medium",
    "LOW": "Low",
    "UNKNOWN": "Unknown",
}
IDENTIFIER_PREFIX = re.compile(r"^([A-Za-z]+)-")
# Fixed, so that a finding gets the same id in every report.
ID_NAMESPACE = uuid.UUID("4f1d2c7e-6a53-4f0e-9a3e-3f4c1b2a9d10")
ANALYZER = {
    "id": "rgbridge-pipeline",
    "name": "rgbridge pipeline",
    "version": __version__,
    "vendor": {"name": "rgbridge"},
}


def build_container_scanning(results: list[StepResult]) -> dict[str, Any] | None:
    """Return the report, or None unless Trivy scanned the image for vulnerabilities.

    A scan without the vulnerability database writes no report, because an
    empty one would tell GitLab that the image has no vulnerabilities.
    """
    scan = find_step(results, "scan")
    if scan is None or not produced(scan, "trivy-image.json"):
        return None
    if not scan.details.get("vulnerabilities_scanned", False):
        return None
    operating_system = str(scan.details.get("operating_system") or "unknown")
    vulnerabilities = [
        _vulnerability(finding, operating_system)
        for finding in scan.findings
        if finding.category == "vulnerability" and finding.image and finding.package
    ]
    return {
        "version": SCHEMA_VERSION,
        "scan": _scan(scan),
        "vulnerabilities": _unique(vulnerabilities),
    }


def _scan(scan: StepResult) -> dict[str, Any]:
    started = scan.started or datetime.now(timezone.utc)
    ended = started + timedelta(seconds=scan.duration)
    return {
        "analyzer": ANALYZER,
        "scanner": {
            "id": "trivy",
            "name": "Trivy",
            "version": str(scan.details.get("trivy_version") or "unknown"),
            "url": "https://github.com/aquasecurity/trivy",
            "vendor": {"name": "Aqua Security"},
        },
        "type": "container_scanning",
        "start_time": _utc(started),
        "end_time": _utc(ended),
        "status": "success",
    }


def _utc(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime(TIME_FORMAT)


def _vulnerability(finding: Finding, operating_system: str) -> dict[str, Any]:
    assert finding.image is not None and finding.package is not None
    version = finding.installed_version or "unknown"
    seed = "\0".join((finding.rule, finding.package, version, finding.path or ""))
    vulnerability: dict[str, Any] = {
        "id": str(uuid.uuid5(ID_NAMESPACE, seed)),
        "name": (finding.title or finding.rule)[:255],
        "description": finding.message,
        "severity": SEVERITIES.get((finding.severity or "").upper(), "Unknown"),
        "location": {
            "dependency": {"package": {"name": finding.package}, "version": version},
            "operating_system": operating_system,
            "image": finding.image,
        },
        "identifiers": [_identifier(finding)],
    }
    if finding.fixed_version:
        fixed = finding.fixed_version
        vulnerability["solution"] = f"Upgrade {finding.package} to {fixed}"
    if finding.url:
        vulnerability["links"] = [{"url": finding.url}]
    return vulnerability


def _identifier(finding: Finding) -> dict[str, str]:
    """Name the advisory: type "cve" for CVE-…, "ghsa" for GHSA-…, else "trivy"."""
    prefix = IDENTIFIER_PREFIX.match(finding.rule)
    identifier = {
        "type": prefix[1].lower() if prefix else "trivy",
        "name": finding.rule,
        "value": finding.rule,
    }
    if finding.url:
        identifier["url"] = finding.url
    return identifier


def _unique(vulnerabilities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the first of the entries that share an id, so that ids are unique.

    Entries share an id when they name the same advisory, package, version
    and path.
    """
    seen: set[str] = set()
    unique = []
    for vulnerability in vulnerabilities:
        if vulnerability["id"] not in seen:
            seen.add(vulnerability["id"])
            unique.append(vulnerability)
    return unique
