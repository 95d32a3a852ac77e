"""Helpers that every report format shares: repository paths and finding levels."""

from __future__ import annotations

import posixpath
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from ..results import Finding, StepResult
from ..steps._context import SOURCE_PATH

Level = Literal["error", "warning", "note"]

# Trivy's own SARIF mapping (pkg/report/sarif.go, toSarifErrorLevel).
SEVERITY_LEVELS: dict[str, Level] = {
    "CRITICAL": "error",
    "HIGH": "error",
    "MEDIUM": "warning",
    "LOW": "note",
    "UNKNOWN": "note",
}
# Trivy's scores for a severity without a CVSS score (pkg/report/sarif.go,
# severityToScore).
SEVERITY_SCORES = {"CRITICAL": 9.5, "HIGH": 8.0, "MEDIUM": 5.5, "LOW": 2.0}
# GitHub fails a pull request's code scanning check on a security severity of
# high or critical by default (github/docs, pull-request-checks.md), and high
# starts at 7.0 as in CVSS v3. A finding below the gate stays under it.
MAX_NON_BLOCKING_SCORE = 6.9
# Variables that CI systems set to the folder of the checked-out repository.
WORKSPACE_VARIABLES = ("GITHUB_WORKSPACE", "CI_PROJECT_DIR")


def level(finding: Finding) -> Level:
    """Return the report level of a finding, which always agrees with the gate.

    A blocking finding is an error whatever its severity. Any other finding
    takes the level of its severity, lowered to a warning at most.
    """
    if finding.blocking:
        return "error"
    mapped = SEVERITY_LEVELS.get((finding.severity or "").upper(), "warning")
    return "warning" if mapped == "error" else mapped


def security_score(finding: Finding) -> float:
    """Return the CVSS-like score (0.0 to 10.0) of a scan finding.

    It is the CVSS v3 score when Trivy has one and Trivy's score for the
    severity otherwise, capped below GitHub's default failing threshold when
    the finding does not block.
    """
    score = finding.score
    if score is None:
        score = SEVERITY_SCORES.get((finding.severity or "").upper(), 0.0)
    if not finding.blocking:
        score = min(score, MAX_NON_BLOCKING_SCORE)
    return score


def path_in_image(finding: Finding) -> str | None:
    """Return the file inside the image that a scan finding names, if any."""
    if finding.image is None or not finding.path:
        return None
    if not finding.path.startswith(finding.image + ":"):
        return None
    return finding.path.removeprefix(finding.image + ":").lstrip("/") or None


def describe_image_finding(finding: Finding) -> str:
    """Return a finding's message with the image, and the file inside it, appended."""
    inside = path_in_image(finding)
    where = f"{finding.image}, {inside}" if inside else str(finding.image)
    return f"{finding.message} (in image {where})"


def find_step(results: list[StepResult], name: str) -> StepResult | None:
    return next((result for result in results if result.name == name), None)


def produced(result: StepResult | None, file_name: str) -> bool:
    """Tell whether a step copied a tool's report of this name in this run."""
    return result is not None and any(path.name == file_name for path in result.reports)


def repository_root(project: Path, environ: Mapping[str, str]) -> Path | None:
    """Return the folder that code scanning and GitLab resolve paths against.

    That is the CI workspace when it contains the project, else git's top
    level. None means that neither contains the project.
    """
    for variable in WORKSPACE_VARIABLES:
        workspace = environ.get(variable)
        if workspace and project.is_relative_to(Path(workspace).resolve()):
            return Path(workspace).resolve()
    try:
        completed = subprocess.run(
            ["git", "-C", str(project), "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        return None
    if completed.returncode != 0:
        return None
    top_level = Path(completed.stdout.strip()).resolve()
    return top_level if project.is_relative_to(top_level) else None


@dataclass(frozen=True)
class RepositoryPaths:
    """Turns the project-relative paths of findings into repository paths.

    ``root`` is the project itself when no repository around it was found
    (``in_repository`` is false), as in the Dagger module, which receives
    the source without ``.git``.
    """

    project: Path
    root: Path
    in_repository: bool = True

    @classmethod
    def find(cls, project: Path, environ: Mapping[str, str]) -> RepositoryPaths:
        # NOTE: the Dagger module sees neither .git nor the CI variables, so
        # paths there are relative to its --source, and code scanning
        # misplaces the findings of a project in a subfolder.
        project = project.resolve()
        root = repository_root(project, environ)
        if root is None:
            return cls(project, project, in_repository=False)
        return cls(project, root)

    def relative(self, path: str) -> str:
        """Return a finding's path relative to the repository root.

        Steps report paths relative to the project, or, from inside a step
        container, under the mount point of the source.
        """
        path = path.removeprefix("./")
        if path.startswith(SOURCE_PATH + "/"):
            path = path.removeprefix(SOURCE_PATH + "/")
        elif PurePosixPath(path).is_absolute():
            absolute = Path(path)
            if not absolute.is_relative_to(self.root):
                return path
            return absolute.relative_to(self.root).as_posix()
        joined = (self.project / path).relative_to(self.root).as_posix()
        return posixpath.normpath(joined)

    @property
    def project_prefix(self) -> str:
        """Return the project folder relative to the root, "" at the root."""
        prefix = self.project.relative_to(self.root).as_posix()
        return "" if prefix == "." else prefix

    @property
    def project_label(self) -> str:
        """Name the project for report categories: its path in the repository,
        "" for the repository root, or its folder name outside a repository."""
        return self.project_prefix if self.in_repository else self.project.name
