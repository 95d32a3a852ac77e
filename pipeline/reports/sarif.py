"""SARIF 2.1.0 for GitHub code scanning: one run for flake8, one for Trivy.

Both runs go into one file, each with its own category, since GitHub's
upload-sarif action rejects an upload with two runs of one category. The
category also names the project, so that the uploads of two projects in one
repository do not replace each other's alerts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from ..results import Finding, StepResult
from ._common import (
    RepositoryPaths,
    describe_image_finding,
    find_step,
    level,
    path_in_image,
    produced,
    security_score,
)

FILE_NAME = "pipeline.sarif"
SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
LEVEL_ORDER = ("note", "warning", "error")
FLAKE8_URI = "https://flake8.pycqa.org/en/latest/user/error-codes.html"
PYCODESTYLE_URI = "https://pycodestyle.pycqa.org/en/latest/intro.html#error-codes"
TRIVY_URI = "https://github.com/aquasecurity/trivy"
# Quoted names and numbers in a flake8 message, which vary between results of
# one rule: "'os' imported but unused", "line too long (91 > 88 characters)".
MESSAGE_VALUES = re.compile(r"'[^']*'|\b\d+\b")


def build_sarif(
    results: list[StepResult], paths: RepositoryPaths
) -> dict[str, Any] | None:
    """Return the SARIF log of a run, or None when neither tool ran."""
    runs = []
    lint = find_step(results, "lint")
    if lint is not None and produced(lint, "flake8.txt"):
        runs.append(_flake8_run(lint, paths))
    scan = find_step(results, "scan")
    if scan is not None and produced(scan, "trivy-image.json"):
        runs.append(_trivy_run(scan, find_step(results, "build"), paths))
    if not runs:
        return None
    return {"$schema": SCHEMA_URI, "version": "2.1.0", "runs": runs}


def _flake8_run(lint: StepResult, paths: RepositoryPaths) -> dict[str, Any]:
    findings = [finding for finding in lint.findings if finding.tool == "flake8"]
    rules: dict[str, dict[str, Any]] = {}
    for finding in findings:
        if finding.rule not in rules:
            rules[finding.rule] = _flake8_rule(finding)
    indexes = {rule: index for index, rule in enumerate(rules)}
    results = [
        _result(finding, indexes[finding.rule], finding.message, paths)
        for finding in findings
    ]
    # flake8 exits non-zero without findings only when it could not run.
    succeeded = lint.ok or bool(findings)
    return _run("flake8", "https://flake8.pycqa.org/", rules, results, paths, succeeded)


def _flake8_rule(finding: Finding) -> dict[str, Any]:
    """Describe a flake8 code by its first message, with the varying values cut."""
    prefix = finding.rule[:1]
    source = {"E": "pycodestyle", "W": "pycodestyle", "F": "pyflakes", "C": "mccabe"}
    description = MESSAGE_VALUES.sub("…", finding.message)
    return {
        "id": finding.rule,
        "shortDescription": {"text": f"{finding.rule} {description}"},
        "helpUri": PYCODESTYLE_URI if prefix in ("E", "W") else FLAKE8_URI,
        "defaultConfiguration": {"level": "error"},
        "properties": {"tags": ["flake8", source.get(prefix, "flake8 plugin")]},
    }


def _trivy_run(
    scan: StepResult, build: StepResult | None, paths: RepositoryPaths
) -> dict[str, Any]:
    findings = [finding for finding in scan.findings if finding.tool == "trivy"]
    dockerfile = None
    if build is not None and build.ok and "dockerfile" in build.details:
        dockerfile = paths.relative(str(build.details["dockerfile"]))

    grouped: dict[str, list[Finding]] = {}
    for finding in findings:
        grouped.setdefault(finding.rule, []).append(finding)
    rules = {rule: _trivy_rule(group) for rule, group in grouped.items()}
    indexes = {rule: index for index, rule in enumerate(rules)}
    results = [
        _result(
            finding,
            indexes[finding.rule],
            _trivy_message(finding),
            paths,
            image_location=_image_location(finding, dockerfile),
        )
        for finding in findings
    ]

    notifications = []
    if not scan.details.get("vulnerabilities_scanned", True):
        notifications.append(
            {
                "level": "warning",
                "message": {
                    "text": "Trivy had no vulnerability database, so this run "
                    "contains secrets and misconfigurations only."
                },
            }
        )
    run = _run("Trivy", TRIVY_URI, rules, results, paths, True, notifications)

    run["properties"] = {
        key: value
        for key, value in (
            ("image", scan.image),
            ("imageId", scan.details.get("image_id")),
            ("operatingSystem", scan.details.get("operating_system")),
        )
        if value
    }
    if scan.details.get("trivy_version"):
        run["tool"]["driver"]["version"] = scan.details["trivy_version"]
    return run


def _trivy_rule(findings: list[Finding]) -> dict[str, Any]:
    first = findings[0]
    title = first.title or first.message
    rule: dict[str, Any] = {
        "id": first.rule,
        "shortDescription": {"text": title},
        "defaultConfiguration": {"level": _highest(level(f) for f in findings)},
        "properties": {
            "tags": [
                "security",
                first.category or "finding",
                first.severity or "UNKNOWN",
            ],
            "security-severity": f"{max(security_score(f) for f in findings):.1f}",
        },
    }
    if first.url:
        rule["helpUri"] = first.url
        rule["help"] = {"text": f"{title}. Severity: {first.severity}. See {first.url}"}
    return rule


def _trivy_message(finding: Finding) -> str:
    # A vulnerability's message already names its fixed version.
    if finding.image is not None:
        return describe_image_finding(finding)
    return finding.message


def _image_location(finding: Finding, dockerfile: str | None) -> tuple[str, int] | None:
    """Place a finding inside an image on the Dockerfile that built it.

    A file inside the image has no place in the repository. Without a
    Dockerfile (a scan of an image passed with --image), the result names
    the file inside the image, or the image's repository, as Trivy does.
    """
    if finding.image is None:
        return None
    if dockerfile is not None:
        return dockerfile, 1
    inside = path_in_image(finding)
    return (inside or finding.image.rsplit(":", 1)[0]), finding.line or 1


def _result(
    finding: Finding,
    rule_index: int,
    message: str,
    paths: RepositoryPaths,
    image_location: tuple[str, int] | None = None,
) -> dict[str, Any]:
    if image_location is not None:
        uri, line = image_location
    else:
        uri, line = paths.relative(finding.path or "."), finding.line or 1
    region: dict[str, int] = {"startLine": line}
    if finding.column is not None and image_location is None:
        region["startColumn"] = finding.column
    properties: dict[str, Any] = {"blocking": finding.blocking}
    for key, value in (
        ("severity", finding.severity),
        ("image", finding.image),
        ("package", finding.package),
        ("installedVersion", finding.installed_version),
        ("fixedVersion", finding.fixed_version),
    ):
        if value is not None:
            properties[key] = value
    return {
        "ruleId": finding.rule,
        "ruleIndex": rule_index,
        "level": level(finding),
        "message": {"text": message},
        "locations": [
            {
                "physicalLocation": {
                    "artifactLocation": {"uri": quote(uri, safe="/")},
                    "region": region,
                }
            }
        ],
        "properties": properties,
    }


def _run(
    tool: str,
    information_uri: str,
    rules: dict[str, dict[str, Any]],
    results: list[dict[str, Any]],
    paths: RepositoryPaths,
    succeeded: bool,
    notifications: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    category = f"pipeline/{tool.lower()}"
    if paths.project_label:
        category += f"/{paths.project_label}"
    invocation: dict[str, Any] = {"executionSuccessful": succeeded}
    if notifications:
        invocation["toolExecutionNotifications"] = notifications
    return {
        "tool": {
            "driver": {
                "name": tool,
                "informationUri": information_uri,
                "rules": list(rules.values()),
            }
        },
        # The category is the part before the last slash.
        "automationDetails": {"id": f"{category}/"},
        "invocations": [invocation],
        # flake8 counts columns in characters, from 1.
        "columnKind": "unicodeCodePoints",
        "results": results,
    }


def _highest(levels: Iterable[str]) -> str:
    return max(levels, key=LEVEL_ORDER.index, default="note")
