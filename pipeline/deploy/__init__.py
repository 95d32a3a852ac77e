"""Deploys, promotions and rollbacks of published images to environments.

The CLI and the Dagger module call ``Deployer``; the targets (``swarm``,
``kubernetes``) only roll images out. Every check that decides whether a
deploy may happen runs here, before a target is touched: the environment
exists, the image is a digest in the environment's registry, and an approval
is given where needed. Every attempt ends as one line of the audit trail.
"""

from __future__ import annotations

import fcntl
import fnmatch
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..audit import Entry, Trail
from ..config import REPOSITORY_NAME, EnvironmentSettings, Settings
from ..errors import DeployFailed, UsageError
from ..secrets import Redactor, resolve
from ..spec import SecretRef
from .base import Outcome, Progress, Release, Target

APPROVED_BY_ENV = "PIPELINE_APPROVED_BY"
DIGEST_REFERENCE = re.compile(
    rf"(?P<repository>{REPOSITORY_NAME.pattern})@(?P<digest>sha256:[0-9a-f]{{64}})"
)


def environment(settings: Settings, name: str, project: Path | None = None) -> EnvironmentSettings:
    """Return the settings of one environment, or raise UsageError listing the others."""
    try:
        return settings.environments[name]
    except KeyError:
        pass
    where = f" in the settings of {project}" if project is not None else ""
    if not settings.environments:
        raise UsageError(
            f"unknown environment {name!r}: no environments are configured{where}",
            hint="pass the project that declares them with -C PATH (or --config "
            f"FILE), or add [environments.{name}] to its settings",
        )
    known = ", ".join(sorted(settings.environments))
    raise UsageError(
        f"unknown environment {name!r}; configured environments{where}: {known}",
        hint=f"add it as [environments.{name}] to the settings, or pick one of those",
    )


def check_reference(image: str, name: str, env: EnvironmentSettings) -> str:
    """Accept only ``repository@sha256:<64 hex>`` in the environment's registry."""
    match = DIGEST_REFERENCE.fullmatch(image)
    if match is None:
        raise UsageError(
            f"{image!r} is not an image digest reference",
            hint="deploy by digest, as REPOSITORY@sha256:<64 hex digits>; "
            "`pipeline publish` prints it and records it in run.json",
        )
    if match["repository"] != env.registry.repository:
        raise UsageError(
            f"image {image!r} is not in the registry of environment {name!r} "
            f"({env.registry.repository})",
            hint=f"publish it with `pipeline publish --env {name}`, or promote "
            "it from the environment that runs it",
        )
    return image


def approval(name: str, env: EnvironmentSettings, approved_by: str | None) -> str | None:
    """Return who approved, raising UsageError when the environment needs it."""
    approved_by = (approved_by or "").strip() or None
    if approved_by is not None and not approved_by.isprintable():
        raise UsageError(
            f"invalid approver name {approved_by!r}: it contains control characters",
            hint="pass the approver's user name or e-mail address",
        )
    if env.approval and approved_by is None:
        raise UsageError(
            f"environment {name!r} needs an approval, and none was given",
            hint=f"pass --approved-by NAME or set {APPROVED_BY_ENV} to the "
            "person who approved this deploy",
        )
    return approved_by


def release_environment(settings: Settings, tag: str | None) -> str:
    """Return the first environment whose ``release_tags`` match the git tag."""
    if tag is None:
        raise UsageError(
            "release needs a git tag on the commit, and there is none",
            hint="tag the commit (git tag v1.4.0) and run the release on it",
        )
    for name, env in settings.environments.items():
        if any(fnmatch.fnmatchcase(tag, pattern) for pattern in env.release_tags):
            return name
    patterns = {
        name: env.release_tags for name, env in settings.environments.items() if env.release_tags
    }
    listed = "; ".join(f"{name}: {', '.join(tags)}" for name, tags in patterns.items())
    raise UsageError(
        f"no environment releases tag {tag!r} ({listed or 'no environment sets release_tags'})",
        hint="add a matching pattern to release_tags of the environment that "
        "should receive this release, such as release_tags = [\"v*\"]",
    )


def resource_name(name: str, env: EnvironmentSettings) -> str:
    """Return the name of the Swarm service or Kubernetes objects of an environment."""
    target = env.target
    if target.kind == "swarm" and target.service:
        return target.service
    if target.kind == "kubernetes" and target.name:
        return target.name
    base = env.registry.repository.rsplit("/", 1)[-1]
    base = re.sub(r"[^a-z0-9-]+", "-", base).strip("-") or "app"
    if target.kind == "swarm":
        return f"{base}-{name}"[:63].rstrip("-")
    return base[:63].rstrip("-")


def open_target(
    env: EnvironmentSettings,
    name: str,
    environment_name: str,
    project: Path,
    reports_dir: Path | None = None,
) -> Target:
    """Connect to the environment's orchestrator (imported only when used).

    A Kubernetes target writes its rendered manifests, without secret
    values, to ``reports_dir/manifests/``.
    """
    if env.target.kind == "swarm":
        from .swarm import SwarmTarget

        return SwarmTarget(env.target, name, environment_name)
    from .kubernetes import KubernetesTarget

    return KubernetesTarget(env.target, name, environment_name, project, reports_dir=reports_dir)


@dataclass
class Deployer:
    """Deploys, promotes and rolls back, writing the audit trail as it goes."""

    project: Path
    settings: Settings
    redactor: Redactor
    trail: Trail
    progress: Progress
    # Replaced in tests that need no orchestrator; the CLI keeps the default.
    reports_dir: Path | None = None

    def deploy(
        self, name: str, image: str, approved_by: str | None, action: str = "deploy",
        detail: str = "",
    ) -> Outcome:
        env = environment(self.settings, name, self.project)
        check_reference(image, name, env)
        self.trail.check()
        entry = Entry("deploy" if action == "deploy" else "promote", name, image, detail=detail)
        entry.approval = self.check_approval(name, approved_by, entry)
        release = self._release(name, env, image)
        with self._exclusive(name), self._connect(env, release.name, name) as target:
            return self._roll_out(target, entry, lambda: target.deploy(release, self.progress))

    def check_approval(self, name: str, approved_by: str | None, entry: Entry) -> str | None:
        """Return who approved; record ``entry`` as refused and raise
        UsageError when the environment needs an approval and has none."""
        try:
            return approval(name, environment(self.settings, name, self.project), approved_by)
        except UsageError:
            entry.result = "refused"
            entry.detail = _join(entry.detail, "no approval")
            self.trail.append(entry)
            raise

    def promote(self, source: str, destination: str, approved_by: str | None) -> Outcome:
        """Deploy to ``destination`` the digest that ``source`` runs now."""
        source_env = environment(self.settings, source, self.project)
        destination_env = environment(self.settings, destination, self.project)
        if source == destination:
            raise UsageError(
                f"cannot promote {source!r} to itself", hint="name two environments"
            )
        with self._connect(source_env, resource_name(source, source_env), source) as target:
            current = target.current_image()
        if current is None:
            raise UsageError(
                f"nothing runs in environment {source!r}, so there is nothing to promote",
                hint=f"deploy to {source} first",
            )
        match = DIGEST_REFERENCE.fullmatch(current)
        if match is None:
            raise UsageError(
                f"environment {source!r} runs {current!r}, which is not a digest "
                "reference, so the very same image cannot be promoted",
                hint=f"redeploy {source} by digest with `pipeline deploy`",
            )
        image = f"{destination_env.registry.repository}@{match['digest']}"
        if match["repository"] != destination_env.registry.repository:
            raise UsageError(
                f"{source!r} pulls from {match['repository']} but {destination!r} "
                f"from {destination_env.registry.repository}",
                hint="promote between environments that share a registry "
                "repository, or publish to the destination's registry",
            )
        return self.deploy(
            destination, image, approved_by, action="promote", detail=f"from {source}"
        )

    def rollback(self, name: str) -> Outcome:
        env = environment(self.settings, name, self.project)
        entry = Entry("rollback", name, None)
        self.trail.check()
        with self._exclusive(name), self._connect(env, resource_name(name, env), name) as target:
            return self._roll_out(target, entry, lambda: target.rollback(self.progress))

    @contextmanager
    def _exclusive(self, name: str) -> Iterator[None]:
        """Hold this machine's lock on the environment, or raise UsageError.

        Two rollouts to one environment at once would each see the other as
        a failure and roll it back. The lock file sits beside the audit trail,
        so it only covers runs on this machine with the same trail; CI jobs
        get the same guarantee from their concurrency groups.
        """
        path = self.trail.path.with_name(f".{self.trail.path.name}.{name}.lock")
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise UsageError(f"cannot create the deploy lock {path}: {exc.strerror}") from exc
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UsageError(
                    f"another deploy, promote or rollback of environment {name!r} "
                    f"is running on this machine (lock {path})",
                    hint="wait for it to finish, then check what the environment runs",
                ) from None
            yield
        finally:
            os.close(descriptor)

    @contextmanager
    def _connect(self, env: EnvironmentSettings, resource: str, name: str) -> Iterator[Target]:
        """Open the target, and close its connection afterwards if it has one."""
        target = open_target(env, resource, name, self.project, self.reports_dir)
        try:
            yield target
        finally:
            close = getattr(target, "close", None)
            if callable(close):
                close()

    def _release(self, name: str, env: EnvironmentSettings, image: str) -> Release:
        secrets = {
            key: resolve(SecretRef(key, uri), self.redactor)
            for key, uri in env.secrets.items()
        }
        return Release(
            environment=name,
            settings=env,
            name=resource_name(name, env),
            image=image,
            secrets=secrets,
            registry_auth=self._registry_auth(env),
        )

    def _registry_auth(self, env: EnvironmentSettings) -> tuple[str, str] | None:
        registry = env.registry
        if registry.password is None:
            return None
        password = resolve(SecretRef("registry password", registry.password), self.redactor)
        username = registry.username or ""
        if re.match(r"(env|file)://", username):
            username = resolve(SecretRef("registry username", username), self.redactor)
        return username.strip(), password.strip()

    def _roll_out(self, target: Target, entry: Entry, action: Callable[[], Outcome]) -> Outcome:
        """Run a deploy or rollback and append its line, whatever the result."""
        start = time.monotonic()
        try:
            entry.previous = target.current_image()
            outcome = action()
        except DeployFailed as exc:
            entry.result = "rolled_back" if exc.rolled_back else "failed"
            entry.detail = _join(entry.detail, exc.message)
            raise
        except UsageError as exc:
            entry.result = "refused"
            entry.detail = _join(entry.detail, exc.message)
            raise
        except BaseException as exc:
            entry.result = "failed"
            entry.detail = _join(entry.detail, getattr(exc, "message", "") or type(exc).__name__)
            raise
        else:
            entry.image = outcome.image
            if outcome.previous is not None:
                entry.previous = outcome.previous
            entry.detail = _join(entry.detail, outcome.detail)
            return outcome
        finally:
            entry.duration_s = round(time.monotonic() - start, 2)
            self.trail.append(entry)


def _join(first: str, second: str) -> str:
    return "; ".join(part for part in (first, second) if part)
