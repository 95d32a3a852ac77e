"""The project on disk: what it declares, its git revision and its ignore rules."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pathspec

from .errors import UsageError

# A requirements line that installs from the project tree, whose content
# changes with the source: "-e .", "./libs/x", "/abs/path", "file:...".
LOCAL_REQUIREMENT = re.compile(r"^\s*(-e\b|--editable\b|\.|/|file:)")
INCLUDED_REQUIREMENTS = re.compile(
    r"^\s*(?:-r|-c|--requirement|--constraint)[=\s]\s*(\S+)"
)

# Never copied into a step container, whatever the project's ignore files say.
ALWAYS_EXCLUDED = (
    ".git/",
    ".hg/",
    ".venv/",
    "venv/",
    ".tox/",
    ".nox/",
    "__pycache__/",
    "*.pyc",
    ".pytest_cache/",
    ".mypy_cache/",
    ".ruff_cache/",
    ".pipeline/",
    "node_modules/",
    "*.egg-info/",
)


@dataclass(frozen=True)
class GitInfo:
    commit: str
    tag: str | None
    remote_url: str | None
    dirty: bool

    @property
    def short(self) -> str:
        return self.commit[:12]


def _git(path: Path, *args: str) -> str | None:
    try:
        completed = subprocess.run(
            ["git", "-C", str(path), *args],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        return None
    if completed.returncode != 0:
        return None
    return completed.stdout.strip()


def _public_url(url: str | None) -> str | None:
    """Drop credentials from a remote URL before it goes into an image label."""
    if url is None:
        return None
    return re.sub(r"(?<=://)[^/@]+@", "", url)


class Project:
    """A folder that the pipeline can run on."""

    def __init__(self, path: Path) -> None:
        self.path = path.resolve()

    @classmethod
    def open(cls, path: Path) -> Project:
        """Open a project folder, or raise UsageError naming what is missing."""
        if not path.exists():
            raise UsageError(f"project path not found: {path}")
        if not path.is_dir():
            raise UsageError(
                f"not a project folder: {path} is a file",
                hint="pass the folder that holds the Dockerfile or pyproject.toml",
            )
        project = cls(path)
        if not (
            (project.path / "Dockerfile").is_file()
            or (project.path / "pyproject.toml").is_file()
            or project.requirement_files
        ):
            raise UsageError(
                f"not a Python project: {project.path} has no Dockerfile, "
                "pyproject.toml or requirements*.txt",
                hint="run the pipeline on the folder that holds one of them",
            )
        return project

    @property
    def name(self) -> str:
        name = re.sub(r"[^a-z0-9._-]+", "-", self.path.name.lower()).strip("-._")
        return name or "project"

    @cached_property
    def requirement_files(self) -> tuple[str, ...]:
        return tuple(sorted(p.name for p in self.path.glob("requirements*.txt")))

    @cached_property
    def is_installable(self) -> bool:
        """True when pip can install the project itself (pip install .)."""
        if (self.path / "setup.py").is_file():
            return True
        pyproject = self.path / "pyproject.toml"
        if not pyproject.is_file():
            return False
        with pyproject.open("rb") as handle:
            try:
                return "project" in tomllib.load(handle)
            except tomllib.TOMLDecodeError:
                return False

    @cached_property
    def declared_dependencies(self) -> tuple[str, ...]:
        """The ``[project] dependencies`` of pyproject.toml, if any."""
        pyproject = self.path / "pyproject.toml"
        if not pyproject.is_file():
            return ()
        with pyproject.open("rb") as handle:
            try:
                table = tomllib.load(handle).get("project", {})
            except tomllib.TOMLDecodeError:
                return ()
        dependencies = table.get("dependencies", [])
        return tuple(str(item) for item in dependencies)

    def requirements_fingerprint(self) -> str | None:
        """Fingerprint the requirements files and the files they include.

        Returns None when a requirement installs from the project tree, so
        that its result cannot be reused across source changes.
        """
        digest = hashlib.sha256()
        pending = list(self.requirement_files)
        seen: set[str] = set()
        while pending:
            name = pending.pop(0)
            if name in seen:
                continue
            seen.add(name)
            path = self.path / name
            if not path.is_file():
                return None
            text = path.read_text(errors="replace")
            for line in text.splitlines():
                if LOCAL_REQUIREMENT.match(line):
                    return None
                included = INCLUDED_REQUIREMENTS.match(line)
                if included:
                    pending.append(
                        (Path(name).parent / included[1]).as_posix()
                    )
            digest.update(f"{name}\0{text}\0".encode())
        return digest.hexdigest()

    @cached_property
    def git(self) -> GitInfo | None:
        commit = _git(self.path, "rev-parse", "HEAD")
        if commit is None:
            return None
        tag = _git(self.path, "describe", "--tags", "--exact-match", "HEAD")
        remote = _git(self.path, "remote", "get-url", "origin")
        status = _git(self.path, "status", "--porcelain", "--", ".")
        return GitInfo(commit, tag or None, _public_url(remote), bool(status))

    def ignore_patterns(self) -> tuple[str, ...]:
        """Patterns excluded from step containers: fixed ones plus .gitignore.

        .dockerignore governs only the image's build context, where BuildKit
        applies it. Step containers do not follow it, because it commonly
        excludes the tests that the test step runs.
        """
        patterns = list(ALWAYS_EXCLUDED)
        ignore_file = self.path / ".gitignore"
        if ignore_file.is_file():
            for line in ignore_file.read_text(errors="replace").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    patterns.append(line)
        return tuple(patterns)

    def iter_files(self, exclude: tuple[str, ...]) -> Iterator[Path]:
        """Yield the project's files, relative to it, minus excluded ones.

        Excluded folders are pruned, so a large virtualenv costs nothing.
        """
        spec = pathspec.GitIgnoreSpec.from_lines(exclude)
        for root, dirs, files in os.walk(self.path):
            relative_root = Path(root).relative_to(self.path)
            dirs[:] = sorted(
                name
                for name in dirs
                if not spec.match_file((relative_root / name).as_posix() + "/")
            )
            for name in sorted(files):
                relative = relative_root / name
                if not spec.match_file(relative.as_posix()):
                    yield relative

    def content_hash(self) -> str:
        """Hash the source tree as steps see it, for tags outside git."""
        digest = hashlib.sha256()
        for relative in self.iter_files(self.ignore_patterns()):
            digest.update(relative.as_posix().encode() + b"\0")
            file = self.path / relative
            if file.is_symlink():
                digest.update(str(file.readlink()).encode())
            else:
                digest.update(file.read_bytes())
            digest.update(b"\0")
        return digest.hexdigest()

    @cached_property
    def revision(self) -> str:
        """The commit, or ``src-<hash>`` of the content outside git."""
        if self.git is not None:
            return self.git.commit
        return "src-" + self.content_hash()[:16]
