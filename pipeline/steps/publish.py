"""publish: push the scanned image to an environment's registry.

Only a committed tree is published, so every tag names a commit: the full
commit hash always, the version for a release tag, and ``latest`` as the
settings choose. Deploys use the registry's digest, never a tag.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..audit import Entry
from ..backends.base import Backend, StepOutputCallback
from ..config import EnvironmentSettings
from ..errors import ConfigError, PublishFailed, UsageError
from ..project import GitInfo
from ..results import Status, StepResult
from ..secrets import Redactor, resolve
from ..spec import PublishOutput, PublishSpec, SecretRef
from . import scan
from ._context import Context, log_name

NAME = "publish"
NEEDS: tuple[str, ...] = ("scan",)
# A release runs lint and test in the same graph; a failure there must stop
# the push as a failed scan does.
AFTER: tuple[str, ...] = ("lint", "test")
FILES = (log_name(NAME), scan.SBOM_FILE)
# A release tag vX.Y.Z, and a pre-release tag vX.Y.Z-SUFFIX (semver 2.0.0
# numbers, without build metadata, which a Docker tag cannot contain).
_NUMBER = r"(?:0|[1-9][0-9]*)"
RELEASE_TAG = re.compile(rf"v(?P<major>{_NUMBER})\.(?P<minor>{_NUMBER})\.(?P<patch>{_NUMBER})")
PRERELEASE_TAG = re.compile(rf"v(?P<version>{_NUMBER}\.{_NUMBER}\.{_NUMBER}-[0-9A-Za-z.-]+)")
SECRET_SCHEMES = ("env://", "file://")


def image_tags(git: GitInfo | None, latest: str, project: Path) -> tuple[str, ...]:
    """Return the tags of a publish of the commit that ``git`` describes.

    The full commit hash always. For a release tag ``vX.Y.Z`` on the commit
    also ``X.Y.Z``, ``X.Y`` and ``X``; for a pre-release tag such as
    ``v1.4.0-rc.1`` only ``1.4.0-rc.1``. ``latest`` comes last, for a release
    tag (``latest = "release"``), always, or never. Raises UsageError for a
    folder outside git and for uncommitted changes.
    """
    if git is None:
        raise UsageError(
            f"{project} is not a git repository, so there is no commit to tag the image with",
            hint="run git init and commit the project, then publish",
        )
    if git.dirty:
        raise UsageError(
            f"{project} has uncommitted changes, so the image is not the commit it would be tagged with",
            hint="commit or stash the changes (git status lists them), then publish",
        )
    tags = [git.commit]
    release = RELEASE_TAG.fullmatch(git.tag or "")
    prerelease = PRERELEASE_TAG.fullmatch(git.tag or "")
    if release:
        major, minor, patch = release["major"], release["minor"], release["patch"]
        tags += [f"{major}.{minor}.{patch}", f"{major}.{minor}", major]
    elif prerelease:
        tags.append(prerelease["version"])
    if latest == "always" or (latest == "release" and release):
        tags.append("latest")
    return tuple(tags)


def environment(ctx: Context) -> tuple[str, EnvironmentSettings]:
    """Return the environment named by --env, or raise UsageError."""
    name = ctx.environment
    configured = ctx.settings.environments
    choices = ", ".join(sorted(configured)) or "none"
    if name is None:
        raise UsageError(
            "publish needs an environment", hint=f"pass --env NAME; configured: {choices}"
        )
    if name not in configured:
        raise UsageError(
            f"unknown environment {name!r}; configured environments: {choices}",
            hint="pass one of them to --env, or add [environments."
            f"{name}] with its registry to the settings",
        )
    return name, configured[name]


def _username(value: str | None) -> SecretRef | str | None:
    if value is not None and value.startswith(SECRET_SCHEMES):
        return SecretRef("registry-username", value)
    return value


def describe(ctx: Context, image: str) -> PublishSpec:
    """Describe the push of ``image`` to the environment's registry."""
    _, settings = environment(ctx)
    registry = settings.registry
    tags = image_tags(ctx.project.git, ctx.settings.publish.latest, ctx.project.path)
    password = SecretRef("registry-password", registry.password) if registry.password else None
    return PublishSpec(
        name=NAME,
        image=image,
        repository=registry.repository,
        tags=tags,
        username=_username(registry.username),
        password=password,
        insecure=registry.insecure,
        attempts=ctx.settings.publish.attempts,
        log_file=ctx.reports_dir / log_name(NAME),
        ca_bundle=ctx.ca_bundle,
    )


def check(ctx: Context, redactor: Redactor) -> None:
    """Check the environment, the work tree and the credentials' references
    before anything runs, and ask the scan for an SBOM when one is wanted.

    Resolving the references here makes a missing variable or file a usage
    error (exit code 2) before the build; the values go to the redactor.
    """
    spec = describe(ctx, image="")
    for ref in (spec.username, spec.password):
        if isinstance(ref, SecretRef):
            resolve(ref, redactor)
    ctx.sbom = ctx.settings.publish.sbom


def label_sbom(path: Path, published: PublishOutput) -> None:
    """Name the published image in the SBOM, which Trivy names by its tarball.

    Sets ``metadata.component`` name and purl (``pkg:oci/NAME@DIGEST`` with
    ``repository_url``), as Trivy does for an image pulled from a registry.
    """
    # Imported here because pipeline.reports imports the steps.
    from ..reports._files import write_text

    sbom = json.loads(path.read_text())
    component: dict[str, Any] = sbom.setdefault("metadata", {}).setdefault("component", {})
    repository = published.reference.split("@", 1)[0]
    name = repository.rsplit("/", 1)[-1]
    component["name"] = repository
    component["purl"] = (
        f"pkg:oci/{name}@{quote(published.digest, safe='')}"
        f"?repository_url={quote(repository, safe='/')}"
    )
    write_text(path, json.dumps(sbom, indent=2) + "\n")


def _sbom_file(ctx: Context) -> Path | None:
    """Return the scan's SBOM, when the settings want one, or raise ConfigError."""
    if not ctx.settings.publish.sbom:
        return None
    path = ctx.reports_dir / scan.SBOM_FILE
    if not path.is_file():
        raise ConfigError(
            f"no SBOM at {path}: the scan writes it only when the run publishes",
            hint="call publish.check before the run (pipeline publish does), "
            "or set publish.sbom = false",
        )
    return path


async def run(ctx: Context, backend: Backend, on_output: StepOutputCallback) -> StepResult:
    if ctx.image is None:
        raise UsageError("no image to publish", hint="run build and scan first")
    spec = describe(ctx, ctx.image)
    sbom = _sbom_file(ctx)
    details: dict[str, Any] = {
        "environment": ctx.environment,
        "repository": spec.repository,
        "tags": list(spec.tags),
    }
    ctx.reports_dir.mkdir(parents=True, exist_ok=True)
    ctx.publishing = (spec.repository, spec.tags)
    try:
        published = await backend.publish(spec, on_output)
    except PublishFailed as exc:
        summary = exc.message + (f" ({exc.hint})" if exc.hint else "")
        details["existing_tags"] = list(exc.existing_tags)
        return StepResult(
            NAME, Status.FAILED, summary, image=ctx.image, details=details, reports=_logs(spec)
        )
    ctx.published = published
    details.update(
        digest=published.digest, reference=published.reference, tags=list(published.tags)
    )
    reports = _logs(spec)
    if sbom is not None:
        label_sbom(sbom, published)
        details["sbom"] = str(sbom)
        reports.append(sbom)
    return StepResult(
        NAME,
        Status.PASSED,
        f"pushed {published.reference} as {', '.join(published.tags)}",
        image=ctx.image,
        details=details,
        reports=reports,
    )


def _logs(spec: PublishSpec) -> list[Path]:
    return [spec.log_file] if spec.log_file is not None and spec.log_file.is_file() else []


def audit_entry(ctx: Context, actor: str = "") -> Entry | None:
    """Build the audit line of the run's publish, or None when it never started.

    A failed push lists the tags that exist after it. Without ``actor`` the
    trail names the user that pipeline.audit.actor finds.
    """
    result = ctx.results.get(NAME)
    if result is None or result.status not in (Status.PASSED, Status.FAILED):
        if ctx.publishing is None:
            return None
        # Interrupted during the push: some tags may already exist.
        repository, tags = ctx.publishing
        return Entry(
            "publish",
            ctx.environment,
            None,
            result="failed",
            detail=f"interrupted during the push to {repository}; any of the "
            f"tags {', '.join(tags)} may exist there",
            tags=list(tags),
            actor=actor,
        )
    published = ctx.published
    tags = published.tags if published else result.details.get("existing_tags", [])
    return Entry(
        "publish",
        ctx.environment,
        published.reference if published else None,
        result="succeeded" if result.ok else "failed",
        duration_s=round(result.duration, 2),
        detail="" if result.ok else result.summary,
        tags=list(tags),
        actor=actor,
    )
