"""GitLab Code Quality from flake8, in the Code Climate issue format GitLab reads.

GitLab's documentation requires ``description``, ``check_name``,
``fingerprint``, ``severity``, ``location.path`` and ``location.lines.begin``
on every issue. ``type`` and ``categories`` complete the Code Climate format.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..results import Finding, StepResult
from ._common import RepositoryPaths, find_step, produced

FILE_NAME = "gl-code-quality-report.json"
# Syntax errors and undefined names, the codes that GitHub's Python starter
# workflow (python-app.yml) fails a build on.
CRITICAL_PREFIXES = ("E9", "F63", "F7", "F82")
CATEGORIES = {"E": "Style", "W": "Style", "F": "Bug Risk", "C": "Complexity"}


def build_code_quality(
    results: list[StepResult], paths: RepositoryPaths
) -> list[dict[str, Any]] | None:
    """Return an issue per flake8 finding, or None when flake8 did not run."""
    lint = find_step(results, "lint")
    if lint is None or not produced(lint, "flake8.txt"):
        return None
    issues = []
    occurrences: dict[tuple[str, str, str], int] = {}
    for finding in lint.findings:
        if finding.tool != "flake8":
            continue
        path = paths.relative(finding.path or ".")
        key = (finding.rule, path, finding.message)
        occurrences[key] = occurrences.get(key, 0) + 1
        issues.append(_issue(finding, path, occurrences[key]))
    return issues


def _issue(finding: Finding, path: str, occurrence: int) -> dict[str, Any]:
    return {
        "type": "issue",
        "check_name": f"flake8/{finding.rule}",
        "description": f"{finding.rule} {finding.message}",
        "categories": [CATEGORIES.get(finding.rule[:1], "Style")],
        "fingerprint": fingerprint(finding.rule, path, finding.message, occurrence),
        "severity": severity(finding),
        "location": {"path": path, "lines": {"begin": finding.line or 1}},
    }


def fingerprint(rule: str, path: str, message: str, occurrence: int) -> str:
    """Identify an issue across runs.

    The line number is left out, so that an issue keeps its fingerprint when
    lines above it move. ``occurrence`` counts equal issues in one file, which
    keeps their fingerprints apart.
    """
    text = "\0".join((rule, path, message, str(occurrence)))
    return hashlib.sha256(text.encode()).hexdigest()


def severity(finding: Finding) -> str:
    """Map a flake8 finding to a Code Quality severity (info when it does not block)."""
    if not finding.blocking:
        return "info"
    if finding.rule.startswith(CRITICAL_PREFIXES):
        return "critical"
    if finding.rule.startswith("F"):
        return "major"
    return "minor"
