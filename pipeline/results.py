"""Step results: a status, findings, and the files each step wrote."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any


class Status(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Finding:
    """One problem a tool reported, in the fields every report format needs.

    ``blocking`` is whether the finding fails its step's gate; a scan
    finding below the severity threshold is reported but not blocking.
    """

    tool: str
    rule: str
    message: str
    path: str | None = None
    line: int | None = None
    column: int | None = None
    severity: str | None = None
    blocking: bool = True
    package: str | None = None
    installed_version: str | None = None
    fixed_version: str | None = None
    # Set by the scan. ``image`` names the image that contains the finding
    # (None for a file of the project), ``category`` is vulnerability, secret
    # or misconfiguration, and ``score`` is the CVSS v3 base score of the
    # source that gave the severity.
    image: str | None = None
    category: str | None = None
    title: str | None = None
    url: str | None = None
    score: float | None = None

    def location(self) -> str:
        parts = [self.path or "-"]
        if self.line is not None:
            parts.append(str(self.line))
            if self.column is not None:
                parts.append(str(self.column))
        return ":".join(parts)

    def format(self) -> str:
        """Render as ``file:line: code message``."""
        severity = f"[{self.severity}] " if self.severity else ""
        return f"{self.location()}: {self.rule} {severity}{self.message}"


@dataclass
class StepResult:
    name: str
    status: Status
    summary: str
    findings: list[Finding] = field(default_factory=list)
    duration: float = 0.0
    image: str | None = None
    output: str = ""
    reports: list[Path] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    started: datetime | None = None  # wall-clock start in UTC, None if it never ran

    @property
    def ok(self) -> bool:
        return self.status in (Status.PASSED, Status.SKIPPED)

    @property
    def blocking_findings(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.blocking]

    def to_dict(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for finding in self.findings:
            key = finding.severity or "error"
            counts[key] = counts.get(key, 0) + 1
        return {
            "name": self.name,
            "status": self.status.value,
            "summary": self.summary,
            "started": (
                self.started.isoformat(timespec="seconds") if self.started else None
            ),
            "duration": round(self.duration, 3),
            "image": self.image,
            "findings": counts,
            "blocking_findings": len(self.blocking_findings),
            "reports": [str(path) for path in self.reports],
            "details": self.details,
        }


def finding_to_dict(finding: Finding) -> dict[str, Any]:
    return {key: value for key, value in asdict(finding).items() if value is not None}
