"""build: the project's Dockerfile with BuildKit, tagged and labelled from git."""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from pathlib import Path

from ..backends.base import Backend, StepOutputCallback
from ..errors import ConfigError
from ..project import GitInfo
from ..results import Finding, Status, StepResult
from ..spec import BuildOutput, BuildSpec, SecretMount, SecretRef
from ._context import Context, log_name, tail

NAME = "build"
NEEDS: tuple[str, ...] = ()
FILES = (log_name(NAME),)

# Docker tags: at most 128 of [A-Za-z0-9_.-], not starting with . or -
TAG_INVALID = re.compile(r"[^A-Za-z0-9_.-]")
# BuildKit names the failing instruction as " > [stage 2/4] RUN ...:" and,
# in newer clients, quotes the Dockerfile line as "Dockerfile:12" + ">>> ...".
FAILED_STEP = re.compile(r"^\s*> \[(?:[^\]]*)\] (?P<instruction>.+?):?\s*$", re.MULTILINE)
DOCKERFILE_LINE = re.compile(r"^(?P<file>\S*Dockerfile[^:\s]*):(?P<line>\d+)\s*$", re.MULTILINE)
ERROR_LINE = re.compile(
    r"^(?:#\d+ )?(?:ERROR|error):? (?P<message>.+)$", re.MULTILINE
)
# The docker client's pointer to its help, which it prints after its error.
CLIENT_HINT = re.compile(r"^(?:See '.*--help'\.?|Usage: .*)$")


def docker_tag(value: str) -> str:
    return TAG_INVALID.sub("-", value).lstrip(".-")[:128] or "untagged"


def describe(ctx: Context, log_file: Path | None = None) -> BuildSpec:
    settings = ctx.settings.build
    project = ctx.project
    dockerfile = project.path / settings.dockerfile
    context = project.path / settings.context
    if not dockerfile.is_file():
        raise ConfigError(
            f"Dockerfile not found: {dockerfile} (setting build.dockerfile)",
            hint="add a Dockerfile, set build.dockerfile to its path, or run "
            "only `pipeline lint` and `pipeline test`",
        )
    if not context.is_dir():
        raise ConfigError(
            f"build context not found: {context} (setting build.context)",
            hint="set build.context to a folder inside the project",
        )

    name = settings.image_name or project.name
    git = project.git
    # A tree with uncommitted changes is not the commit, so its tags mark that.
    dirty = "-dirty" if git is not None and git.dirty else ""
    tags = [f"{name}:{docker_tag(project.revision)}{dirty}"]
    if git is not None:
        tags.append(f"{name}:{git.short}{dirty}")
        if git.tag and not dirty:
            tags.append(f"{name}:{docker_tag(git.tag)}")
    version = (git.tag if git and git.tag else None) or (
        git.short if git else project.revision
    )
    labels = [
        ("org.opencontainers.image.revision", project.revision),
        ("org.opencontainers.image.created", _created(git)),
        ("org.opencontainers.image.version", version),
        ("org.opencontainers.image.title", name),
        ("org.opencontainers.image.source", (git.remote_url if git else None) or ""),
    ]
    secrets: tuple[SecretMount, ...] = ()
    if ctx.ca_bundle is not None:
        secrets = (SecretMount(SecretRef("ca", f"file://{ctx.ca_bundle}")),)
    return BuildSpec(
        name=NAME,
        context=context,
        dockerfile=dockerfile,
        tags=tuple(tags),
        target=settings.target,
        build_args=tuple(sorted(settings.build_args.items())),
        labels=tuple((key, value) for key, value in labels if value),
        secrets=secrets,
        log_file=log_file,
    )


def _created(git: GitInfo | None) -> str:
    """Return the commit's time for a committed tree, else the current time.

    With the commit's time, a rebuild of the same commit has the same image
    configuration. With cached layers it is the same image, so a publish
    gives the same registry digest.
    """
    if git is not None and not git.dirty and git.committed:
        return git.committed
    return _now()


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def parse_build_failure(log: str, dockerfile: Path, root: Path) -> list[Finding]:
    """Name the instruction that failed, its line and the error BuildKit gave."""
    errors = [match["message"].strip() for match in ERROR_LINE.finditer(log)]
    message = errors[-1] if errors else _last_line(log) or "build failed"
    steps = [match["instruction"] for match in FAILED_STEP.finditer(log)]
    instruction = steps[-1] if steps else None
    line_matches = list(DOCKERFILE_LINE.finditer(log))
    if line_matches:
        line: int | None = int(line_matches[-1]["line"])
    else:
        line = _find_instruction(dockerfile, instruction)
    if instruction:
        message = f"{instruction}: {message}"
    return [
        Finding(
            tool="buildkit",
            rule="build-error",
            message=message,
            path=dockerfile.relative_to(root).as_posix(),
            line=line,
        )
    ]


def parse_client_failure(log: str) -> list[Finding]:
    """Return the docker client's own error, for a build that failed before
    BuildKit started (an invalid tag or option), so the Dockerfile is not blamed.

    The client prints its error, then a pointer to its help such as
    ``See 'docker build --help'.``, which is left out.
    """
    errors = [match["message"].strip() for match in ERROR_LINE.finditer(log)]
    lines = [
        line.strip()
        for line in log.splitlines()
        if line.strip() and not CLIENT_HINT.match(line.strip())
    ]
    if errors:
        message = errors[-1]
    elif lines:
        message = lines[-1]
    else:
        message = "the docker client failed before the build started"
    return [Finding(tool="docker", rule="build-error", message=message)]


def _last_line(log: str) -> str | None:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    return lines[-1] if lines else None


def _find_instruction(dockerfile: Path, instruction: str | None) -> int | None:
    """Find the line of an instruction that older clients print without one."""
    if not instruction or not dockerfile.is_file():
        return None
    wanted = " ".join(instruction.split())
    lines = dockerfile.read_text(errors="replace").splitlines()
    for number, text in enumerate(lines, start=1):
        head = " ".join(text.rstrip("\\").split())
        if head and wanted.startswith(head):
            return number
    return None


def judge(spec: BuildSpec, output: BuildOutput, root: Path) -> StepResult:
    if output.exit_code != 0 or output.image_id is None:
        if output.builder_started:
            findings = parse_build_failure(output.log, spec.dockerfile, root)
        else:
            findings = parse_client_failure(output.log)
        return StepResult(
            NAME,
            Status.FAILED,
            findings[0].message,
            findings=findings,
            output=tail(output.log),
        )
    return StepResult(
        NAME,
        Status.PASSED,
        f"built {min(spec.tags, key=len)}",
        image=spec.tags[0],
        details={
            "image_id": output.image_id,
            "tags": list(spec.tags),
            "dockerfile": Path(os.path.relpath(spec.dockerfile, root)).as_posix(),
        },
    )


async def run(ctx: Context, backend: Backend, on_output: StepOutputCallback) -> StepResult:
    # Imported here because pipeline.reports imports the steps.
    from ..reports._files import write_text

    ctx.reports_dir.mkdir(parents=True, exist_ok=True)
    log_file = ctx.reports_dir / log_name(NAME)
    spec = describe(ctx, log_file)
    output = await backend.build(spec, on_output)
    if output.log_file is None:
        write_text(log_file, output.log)
    result = judge(spec, output, ctx.project.path)
    result.reports.append(log_file)
    if result.ok:
        ctx.image = spec.tags[0]
    return result
