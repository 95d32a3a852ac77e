"""The audit trail: one JSON line for every publish, deploy, promote and rollback.

Lines are only ever appended. Each line is written with a single ``write`` on
a file opened with O_APPEND under an exclusive lock, so two pipelines that
deploy at once cannot interleave their lines. Every line passes through the
run's redactor before it is written or logged.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from . import __version__
from .errors import ConfigError
from .secrets import Redactor, redact

Action = Literal["publish", "deploy", "promote", "rollback"]
Result = Literal["succeeded", "failed", "rolled_back", "refused"]


@dataclass
class Entry:
    """One line of the trail. ``image`` is a ``repository@sha256:...``
    reference; ``approval`` is the approver's name, or None."""

    action: Action
    environment: str | None
    image: str | None
    previous: str | None = None
    approval: str | None = None
    result: Result = "succeeded"
    duration_s: float = 0.0
    detail: str = ""
    actor: str = ""
    time: str = ""
    tags: list[str] = field(default_factory=list)
    ci: dict[str, str] = field(default_factory=dict)
    tool_version: str = __version__

    def to_json(self) -> str:
        # Every key on every line, so that readers need no defaults; time,
        # action and actor first, as people read them.
        data = asdict(self)
        first = {key: data.pop(key) for key in ("time", "action", "actor")}
        return json.dumps({**first, **data}, separators=(",", ":"))


# Variables in which CI systems name the user who started a job, most specific first.
ACTOR_VARIABLES = (
    "PIPELINE_ACTOR",
    "GITHUB_TRIGGERING_ACTOR",
    "GITHUB_ACTOR",
    "GITLAB_USER_LOGIN",
    "GITLAB_USER_EMAIL",
    "BUILD_REQUESTEDFOREMAIL",
    "BUILDKITE_BUILD_CREATOR_EMAIL",
)


def actor(project: Path, environ: Mapping[str, str] | None = None) -> str:
    """Name who runs this: the CI system's user, else git's, else the login."""
    env = os.environ if environ is None else environ
    for name in ACTOR_VARIABLES:
        if env.get(name):
            return env[name]
    try:
        email = subprocess.run(
            ["git", "config", "user.email"],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        email = ""
    if email:
        return email
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def ci_context(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the CI job that acted, so that a line leads back to its log."""
    env = os.environ if environ is None else environ
    if env.get("GITHUB_ACTIONS") == "true":
        server = env.get("GITHUB_SERVER_URL", "https://github.com")
        repository = env.get("GITHUB_REPOSITORY", "")
        run_id = env.get("GITHUB_RUN_ID", "")
        return {
            "system": "github",
            "job": f"{server}/{repository}/actions/runs/{run_id}",
            "ref": env.get("GITHUB_REF", ""),
        }
    if env.get("GITLAB_CI") == "true":
        return {
            "system": "gitlab",
            "job": env.get("CI_JOB_URL", ""),
            "ref": env.get("CI_COMMIT_REF_NAME", ""),
        }
    return {}


class Trail:
    """The audit trail of one project, at the path that ``audit.path`` names."""

    def __init__(
        self,
        path: Path,
        redactor: Redactor,
        project: Path,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.path = path
        self.redactor = redactor
        self.project = project
        self.echo = echo

    @classmethod
    def for_project(
        cls,
        project: Path,
        setting: str,
        redactor: Redactor,
        echo: Callable[[str], None] | None = None,
    ) -> Trail:
        path = Path(setting).expanduser()
        if not path.is_absolute():
            path = project / path
        if path.is_dir():
            raise ConfigError(
                f"audit.path {path} is a folder",
                hint="name a file, such as .pipeline/audit.jsonl",
            )
        return cls(path, redactor, project, echo)

    def append(self, entry: Entry) -> str:
        """Fill in time and actor, write the line, log it, and return it."""
        if not entry.time:
            entry.time = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if not entry.actor:
            entry.actor = actor(self.project)
        if not entry.ci:
            entry.ci = ci_context()
        line = redact(self.redactor(entry.to_json()))
        descriptor = self._open()
        try:
            with os.fdopen(descriptor, "a", encoding="utf-8") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                handle.write(line + "\n")
                handle.flush()
        except OSError as exc:
            raise ConfigError(
                f"cannot write the audit trail {self.path}: {exc.strerror}; the "
                f"line was: {line}",
                hint="set audit.path to a writable file, and add the line by hand",
            ) from exc
        # Also into the CI log, which outlives a runner's disk.
        if self.echo is not None:
            self.echo(f"audit: {line}")
        return line

    def check(self) -> None:
        """Raise ConfigError now when the trail cannot be written, so that an
        action is refused before it changes anything rather than after."""
        os.close(self._open())

    def _open(self) -> int:
        """Open the trail for appending, creating it and its folder."""
        parent = self.path.parent
        if parent.exists() and not parent.is_dir():
            raise ConfigError(
                f"cannot write the audit trail {self.path}: {parent} is not a folder",
                hint="set audit.path to a file in a folder",
            )
        if self.path.is_symlink():
            raise ConfigError(
                f"the audit trail {self.path} is a symbolic link, which is not followed",
                hint="remove the link, or set audit.path to the file itself",
            )
        if self.path.exists() and not self.path.is_file():
            raise ConfigError(
                f"the audit trail {self.path} is not a regular file",
                hint="set audit.path to a regular file, such as .pipeline/audit.jsonl",
            )
        try:
            parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            return os.open(self.path, flags, 0o640)
        except OSError as exc:
            raise ConfigError(
                f"cannot write the audit trail {self.path}: {exc.strerror}",
                hint="set audit.path to a writable file",
            ) from exc

    def entries(self) -> list[dict[str, Any]]:
        """Return every line of the trail, oldest first. An absent file has none."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]
