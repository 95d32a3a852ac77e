"""The project on disk: what it declares, its git revision and its ignore rules."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import pathspec

from .config import read_toml
from .errors import ConfigError, UsageError

log = logging.getLogger(__name__)

# A requirements line that installs from the project tree, whose content
# changes with the source: "-e .", "./libs/x", "/abs/path", "file:...".
LOCAL_REQUIREMENT = re.compile(r"^\s*(-e\b|--editable\b|\.|/|file:)")
INCLUDED_REQUIREMENTS = re.compile(
    r"^\s*(?:-r|-c|--requirement|--constraint)[=\s]\s*(\S+)"
)

# Never copied into a step container, whatever the project's ignore files contain.
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
DEFAULT_STATE_DIR = ".pipeline"

# A path component of a Docker repository name, as github.com/distribution/
# reference defines it: lowercase letters and digits, joined by one
# separator (".", "_", "__" or any number of "-").
_NAME_SEPARATOR = re.compile(r"[._]|__|-+")
_NAME_MAX_LENGTH = 128
HASH_CHUNK = 1 << 20

# Invalid ignore lines already reported, so that each is logged once per
# process although every step reads the ignore file again.
_reported_patterns: set[tuple[Path, int, str]] = set()


@dataclass(frozen=True)
class GitInfo:
    commit: str
    tag: str | None
    remote_url: str | None
    dirty: bool
    # The commit's time, UTC, ISO 8601; None where it is unknown.
    committed: str | None = None

    @property
    def short(self) -> str:
        return self.commit[:12]


def _run_git(path: Path, *args: str) -> bytes | None:
    """Run git in path and return its stdout, or None when git fails.

    ``--no-optional-locks`` keeps read-only commands such as ``git status``
    from rewriting .git/index, which another git process may be using.
    """
    try:
        completed = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(path), *args],
            capture_output=True,
            check=False,
        )
    except FileNotFoundError:
        return None
    if completed.returncode != 0:
        return None
    return completed.stdout


def _git(path: Path, *args: str) -> str | None:
    output = _run_git(path, *args)
    if output is None:
        return None
    return output.decode(errors="replace").strip()


def _utc(timestamp: str | None) -> str | None:
    try:
        moment = datetime.fromisoformat(timestamp or "")
    except ValueError:
        return None
    return moment.astimezone(timezone.utc).isoformat()


RELEASE_TAG = re.compile(r"v\d+\.\d+\.\d+(?:[-+].*)?")


def _release_tag(tags: str) -> str | None:
    """Pick the commit's tag: a release tag (vX.Y.Z) before any other, the
    highest version first, so that a build tag beside it changes nothing."""
    names = [name for name in tags.splitlines() if name.strip()]
    if not names:
        return None
    releases = [name for name in names if RELEASE_TAG.fullmatch(name)]
    if releases:
        return max(releases, key=_version_key)
    return sorted(names)[0]


def _version_key(tag: str) -> tuple[int, int, int, int]:
    major, minor, patch = (int(part) for part in re.findall(r"\d+", tag)[:3])
    # A pre-release (v1.4.0-rc.1) sorts before its release (v1.4.0).
    return major, minor, patch, 0 if re.search(r"-", tag) else 1


def _public_url(url: str | None) -> str | None:
    """Drop credentials from a remote URL before it goes into an image label."""
    if url is None:
        return None
    return re.sub(r"(?<=://)[^/@]+@", "", url)


def repository_name(folder_name: str) -> str:
    """Turn a folder name into a valid Docker repository name component.

    Invalid characters become "-", separators that the grammar does not allow
    (such as "..", "_-" or ".-") become "-", and separators at either end are
    dropped. A name with no letters or digits left becomes "project".
    """
    parts = re.split(r"([^a-z0-9]+)", folder_name.lower())
    words = parts[::2]
    separators = [
        separator if _NAME_SEPARATOR.fullmatch(separator) else "-"
        for separator in parts[1::2]
    ]
    name = words[0]
    for separator, word in zip(separators, words[1:]):
        name += separator + word
    name = name[:_NAME_MAX_LENGTH]
    return re.sub(r"^[^a-z0-9]+|[^a-z0-9]+$", "", name) or "project"


def _compile_error(pattern: str) -> str | None:
    """Return why pathspec cannot compile a gitignore pattern, or None."""
    try:
        pathspec.GitIgnoreSpec.from_lines([pattern])
    except (re.error, ValueError) as exc:
        return str(exc)
    return None


def _escape_pattern(path: str) -> str:
    """Escape the gitignore wildcards in a literal path."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", path)


def _spec(patterns: Iterable[str]) -> pathspec.GitIgnoreSpec:
    """Compile patterns, skipping any that pathspec cannot compile."""
    valid = []
    for pattern in patterns:
        error = _compile_error(pattern)
        if error is None:
            valid.append(pattern)
        else:
            log.warning("skipping invalid exclude pattern %r: %s", pattern, error)
    return pathspec.GitIgnoreSpec.from_lines(valid)


def _is_copied_type(path: Path) -> bool:
    """True for regular files and symlinks, which are copied as links.

    FIFOs, sockets and device files are skipped: reading a FIFO blocks, and
    neither sockets nor devices mean anything inside a container.
    """
    try:
        mode = path.lstat().st_mode
    except OSError:
        return False
    return stat.S_ISREG(mode) or stat.S_ISLNK(mode)


class Project:
    """A folder that the pipeline can run on.

    ``reports_dir`` is the folder the run writes its reports to. It is left
    out of the files that steps see and of git's dirty check, so that a run's
    own output never changes the revision it reports.
    """

    def __init__(self, path: Path, reports_dir: Path | None = None) -> None:
        self.path = path.resolve()
        self.reports_dir = (
            None
            if reports_dir is None
            else Path(os.path.normpath(self.path / reports_dir))
        )

    @classmethod
    def open(cls, path: Path, reports_dir: Path | None = None) -> Project:
        """Open a project folder, or raise UsageError naming what is missing.

        An unreadable or invalid pyproject.toml raises ConfigError here, before
        anything runs.
        """
        if not path.exists():
            raise UsageError(f"project path not found: {path}")
        if not path.is_dir():
            raise UsageError(
                f"not a project folder: {path} is a file",
                hint="pass the folder that holds the Dockerfile or pyproject.toml",
            )
        project = cls(path, reports_dir)
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
        # Reading the dependencies validates pyproject.toml before anything runs.
        _ = project.declared_dependencies
        return project

    @property
    def name(self) -> str:
        """The project folder's name as a valid Docker repository name."""
        return repository_name(self.path.name)

    @cached_property
    def requirement_files(self) -> tuple[str, ...]:
        return tuple(sorted(p.name for p in self.path.glob("requirements*.txt")))

    @cached_property
    def _pyproject(self) -> dict[str, Any] | None:
        pyproject = self.path / "pyproject.toml"
        if not pyproject.is_file():
            return None
        return read_toml(pyproject)

    def _project_table(self) -> dict[str, Any] | None:
        """Return the ``[project]`` table of pyproject.toml, or None without one.

        Raises ConfigError when ``project`` is not a table.
        """
        data = self._pyproject
        if data is None or "project" not in data:
            return None
        table = data["project"]
        if not isinstance(table, dict):
            raise ConfigError(
                f"invalid key 'project' in {self.path / 'pyproject.toml'}: "
                f"{table!r} is not a table",
                hint="write the project metadata as a [project] table",
            )
        return table

    @cached_property
    def is_installable(self) -> bool:
        """True when pip can install the project itself (pip install .)."""
        if (self.path / "setup.py").is_file():
            return True
        return self._project_table() is not None

    @cached_property
    def declared_dependencies(self) -> tuple[str, ...]:
        """The ``[project] dependencies`` of pyproject.toml, if any."""
        table = self._project_table()
        if table is None:
            return ()
        dependencies = table.get("dependencies", [])
        if not isinstance(dependencies, list) or not all(
            isinstance(item, str) for item in dependencies
        ):
            raise ConfigError(
                "invalid key 'project.dependencies' in "
                f"{self.path / 'pyproject.toml'}: {dependencies!r} is not a "
                "list of strings",
                hint='write a list of requirements: dependencies = ["requests>=2"]',
            )
        return tuple(dependencies)

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

    def _state_dirs(self) -> list[str]:
        """Folders the pipeline writes to, relative to the project."""
        folders = [DEFAULT_STATE_DIR]
        if self.reports_dir is not None and self.reports_dir.is_relative_to(
            self.path
        ):
            relative = self.reports_dir.relative_to(self.path).as_posix()
            if relative != ".":
                folders.append(relative)
        return folders

    @cached_property
    def git(self) -> GitInfo | None:
        commit = _git(self.path, "rev-parse", "HEAD")
        if commit is None:
            return None
        tag = _release_tag(_git(self.path, "tag", "--points-at", "HEAD") or "")
        remote = _git(self.path, "remote", "get-url", "origin")
        excluded = [f":(exclude,literal){folder}" for folder in self._state_dirs()]
        status = _git(self.path, "status", "--porcelain", "--", ".", *excluded)
        committed = _utc(_git(self.path, "show", "-s", "--format=%cI", "HEAD"))
        return GitInfo(commit, tag or None, _public_url(remote), bool(status), committed)

    @cached_property
    def _gitignore_lines(self) -> tuple[str, ...]:
        """The valid patterns of the project's .gitignore.

        Lines that pathspec cannot compile (git ignores them) are skipped
        with a warning.
        """
        ignore_file = self.path / ".gitignore"
        if not ignore_file.is_file():
            return ()
        patterns = []
        text = ignore_file.read_text(errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            error = _compile_error(line)
            if error is None:
                patterns.append(line)
                continue
            key = (ignore_file, number, line)
            if key not in _reported_patterns:
                _reported_patterns.add(key)
                log.warning(
                    "%s:%d: skipping invalid ignore pattern %r: %s",
                    ignore_file,
                    number,
                    line,
                    error,
                )
        return tuple(patterns)

    def _fixed_exclusions(self) -> tuple[str, ...]:
        """ALWAYS_EXCLUDED plus the reports folder, anchored at the root."""
        return ALWAYS_EXCLUDED + tuple(
            "/" + _escape_pattern(folder) + "/" for folder in self._state_dirs()[1:]
        )

    def ignore_patterns(self) -> tuple[str, ...]:
        """Patterns excluded from step containers: .gitignore plus fixed ones.

        The fixed patterns come last, so that no negation in .gitignore can
        re-include them in a matcher where the last matching pattern wins.
        .dockerignore governs only the image's build context, where BuildKit
        applies it. Step containers do not follow it, because it commonly
        excludes the tests that the test step runs.
        """
        return self._gitignore_lines + self._fixed_exclusions()

    def iter_files(self, exclude: tuple[str, ...]) -> Iterator[Path]:
        """Yield the project's files, relative to it, minus excluded ones.

        Inside a git work tree, git lists the files: tracked ones plus
        untracked ones that no ignore file excludes, so every .gitignore
        applies with git's own semantics. Of ``exclude``, only the patterns
        that are not lines of the project's .gitignore then apply. Outside
        git, all of ``exclude`` applies as gitignore patterns.

        ALWAYS_EXCLUDED and the reports folder are excluded in both cases,
        and nothing can re-include them. Only regular files and symlinks are
        yielded. A symlink is yielded as itself, also when it points to a
        folder, and is never followed.
        """
        fixed = self._fixed_exclusions()
        fixed_spec = _spec(fixed)
        listed = self._git_files()
        if listed is None:
            patterns = [pattern for pattern in exclude if pattern not in fixed]
            candidates = self._walk(fixed_spec, patterns)
        else:
            own = set(self._gitignore_lines) | set(fixed)
            patterns = [pattern for pattern in exclude if pattern not in own]
            candidates = iter(listed)
        spec = _spec(patterns)
        for relative in candidates:
            if self._is_fixed_exclusion(fixed_spec, relative):
                continue
            if spec.match_file(relative.as_posix()):
                continue
            if _is_copied_type(self.path / relative):
                yield relative

    def _is_fixed_exclusion(self, spec: pathspec.GitIgnoreSpec, relative: Path) -> bool:
        if spec.match_file(relative.as_posix()):
            return True
        # A symlink named like an excluded folder (.venv -> /opt/venv) is
        # excluded as that folder would be.
        return (self.path / relative).is_dir() and spec.match_file(
            relative.as_posix() + "/"
        )

    def _git_files(self) -> list[Path] | None:
        """List the files git would commit, or None outside a git work tree.

        A project folder that its enclosing repository ignores is treated as
        outside git, because git lists no file in it.
        """
        if _git(self.path, "rev-parse", "--is-inside-work-tree") != "true":
            return None
        if _run_git(self.path, "check-ignore", "--quiet", "--", ".") is not None:
            return None
        return _list_git_files(self.path, Path(), _spec(self._fixed_exclusions()))

    def _walk(
        self, fixed: pathspec.GitIgnoreSpec, patterns: list[str]
    ) -> Iterator[Path]:
        """Yield every file and symlink under the project, sorted per folder.

        Folders excluded by the fixed patterns are pruned. Folders excluded
        by the other patterns are pruned too, unless a pattern is a negation,
        which could re-include a file below an excluded folder.
        """
        prune = fixed
        if not any(pattern.startswith("!") for pattern in patterns):
            prune = _spec([*patterns, *self._fixed_exclusions()])
        for root, dirs, files in os.walk(self.path):
            relative_root = Path(root).relative_to(self.path)
            kept = []
            for name in sorted(dirs):
                relative = relative_root / name
                if (self.path / relative).is_symlink():
                    files.append(name)
                elif not prune.match_file(relative.as_posix() + "/"):
                    kept.append(name)
            dirs[:] = kept
            for name in sorted(files):
                yield relative_root / name

    def content_hash(self) -> str:
        """Hash the source tree as steps see it, for tags outside git."""
        digest = hashlib.sha256()
        for relative in self.iter_files(self.ignore_patterns()):
            digest.update(os.fsencode(relative.as_posix()) + b"\0")
            file = self.path / relative
            if file.is_symlink():
                digest.update(os.fsencode(os.readlink(file)))
            else:
                with file.open("rb") as handle:
                    while chunk := handle.read(HASH_CHUNK):
                        digest.update(chunk)
            digest.update(b"\0")
        return digest.hexdigest()

    @cached_property
    def revision(self) -> str:
        """The commit, or ``src-<hash>`` of the content outside git."""
        if self.git is not None:
            return self.git.commit
        return "src-" + self.content_hash()[:16]


def _list_git_files(
    work_tree: Path, prefix: Path, fixed: pathspec.GitIgnoreSpec
) -> list[Path]:
    """List the files git would commit in work_tree, relative to the project.

    Folders in the listing are nested repositories (untracked ones end in
    "/") or submodules. Their files are listed by their own git, which
    applies their own ignore files, unless the fixed exclusions cover them.
    """
    # The fixed exclusions also go to git, so that it does not list the
    # files of an untracked virtualenv one by one. Patterns given with
    # --exclude take precedence over the ignore files.
    excludes = [f"--exclude={pattern}" for pattern in ALWAYS_EXCLUDED]
    output = _run_git(
        work_tree,
        "ls-files",
        "-z",
        "--cached",
        "--others",
        "--exclude-standard",
        *excludes,
        "--",
        ".",
    )
    if output is None:
        return []
    files: list[Path] = []
    seen: set[str] = set()
    for raw in output.split(b"\0"):
        name = os.fsdecode(raw).rstrip("/")
        if not name or name in seen:
            continue
        seen.add(name)
        path = work_tree / name
        if path.is_dir() and not path.is_symlink():
            if not fixed.match_file((prefix / name).as_posix() + "/"):
                files.extend(_list_git_files(path, prefix / name, fixed))
        elif path.is_symlink() or path.exists():
            files.append(prefix / name)
    return sorted(files)
