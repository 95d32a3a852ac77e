"""The module's functions: thin wrappers that run the pipeline's steps on Dagger.

Each call exports the source into the module's container, so the library
reads the settings, ignore files and Dockerfile from disk as it does on a
host. The steps then run through the Dagger backend, which maps that folder
back onto the source Directory instead of uploading the files again.

The module has no ``.git``, so ``publish`` and ``release`` take the commit
and tag as arguments, and the caller's variables and files reach them only
as Secret, Socket and File arguments.

NOTE: inside a module, ``Directory.export`` and ``dag.host()`` use the
module's own container, as dagger/dagger#5867 and #8706 describe. This has
not been run against an engine.
"""

import contextlib
import io
import json
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import dagger
from dagger import DefaultPath, Doc, Ignore, dag, function, object_type
from rich.console import Console

from pipeline import deploy
from pipeline.audit import Trail
from pipeline.backends.dagger import DaggerBackend, Inputs, check_registry
from pipeline.backends import dagger_release as release_inputs
from pipeline.backends.dagger_release import TOOL_SOURCE_IGNORE, DeployInputs
from pipeline.config import EnvironmentSettings
from pipeline.errors import PipelineError
from pipeline.graph import run_graph
from pipeline.project import GitInfo
from pipeline.results import Status, StepResult
from pipeline.run import Prepared, RunRecord, execute, prepare, write_record
from pipeline.steps import STEPS
from pipeline.steps import publish as publish_step
from pipeline.steps import scan as scan_step
from pipeline.ui import failure_details, summary_table

# Paths that are not uploaded from the caller's host. They are folders that
# the pipeline never copies into a step container either.
SOURCE_IGNORE = [
    "**/.git",
    "**/.venv",
    "**/venv",
    "**/__pycache__",
    "**/.pytest_cache",
    "**/.mypy_cache",
    "**/.ruff_cache",
    "**/.tox",
    "**/.nox",
    "**/node_modules",
    ".pipeline",
]
ALL_STEPS = ["lint", "test", "build", "scan"]
# The tag under which an image passed to `scan --image` is scanned.
SCANNED_IMAGE = "scanned-image:latest"
REPORT_WIDTH = 100
# The lines of a failed deploy's output that its error message repeats.
DEPLOY_ERROR_LINES = 40


class PipelineFailed(Exception):
    """A step failed or the pipeline rejected its input. The message names which."""


@dataclass
class _Run:
    prepared: Prepared
    backend: DaggerBackend

    async def execute(self, steps: list[str]) -> RunRecord:
        try:
            record = await execute(self.prepared, steps, self.backend, _ignore_event)
        except PipelineError as exc:
            raise PipelineFailed(_explain(exc)) from None
        write_record(record)
        return record


@dataclass
class _Commit:
    """The commit and tag that a publish names its image after."""

    commit: str
    tag: str

    def git(self) -> GitInfo:
        # The caller vouches that the source is this commit, as a CI
        # checkout is, because the module cannot compare them.
        return GitInfo(self.commit, self.tag or None, None, False)


@dataclass
class _Credentials:
    """The registry credentials given to publish or release."""

    username: str
    password: dagger.Secret | None
    # Secrets by the reference in the settings that they stand for.
    secrets: dict[str, dagger.Secret] = field(default_factory=dict)

    def file_password(self, name: str, env: EnvironmentSettings) -> None:
        """File the password under the settings' reference, or raise UsageError
        when a credential is missing."""
        reference = release_inputs.check_credentials(
            name, env, self.username, self.password is not None
        )
        if reference is not None and self.password is not None:
            self.secrets[reference] = self.password


@dataclass(frozen=True)
class _Export:
    """The folders that the source and the settings file were exported to."""

    project_dir: Path
    config_file: Path | None = None

    @property
    def config_name(self) -> str:
        return self.config_file.name if self.config_file is not None else "pipeline.toml"


@object_type
class Ci:
    """The rgbridge pipeline: lint, test, build, scan, publish and deploy a Python project."""

    source: Annotated[
        dagger.Directory,
        DefaultPath("/"),
        Ignore(SOURCE_IGNORE),
        Doc("Project to run on (default: the root of the calling repository)"),
    ]
    config: Annotated[
        dagger.File | None,
        Doc("Settings file (default: pipeline.toml or pyproject.toml in the source)"),
    ] = None

    @function
    async def lint(self) -> str:
        """Run flake8 on the source and fail on any finding."""
        run = await self._start()
        return _report_or_raise(await run.execute(["lint"]))

    @function
    async def test(self) -> str:
        """Install the project, run pytest and fail on any failing test."""
        run = await self._start()
        return _report_or_raise(await run.execute(["test"]))

    @function
    async def reports(self) -> dagger.Directory:
        """Run every step and return the reports folder, even when a step fails."""
        run = await self._start()
        record = await run.execute(ALL_STEPS)
        return dag.host().directory(str(record.reports_dir))

    @function
    async def build(self) -> dagger.Container:
        """Build the project's image from its Dockerfile."""
        run = await self._start()
        record = await run.execute(["build"])
        _report_or_raise(record)
        image = record.results[0].image
        assert image is not None, "a passed build always names its image"
        return run.backend.images[image]

    @function
    async def scan(
        self,
        image: Annotated[
            dagger.Container | None,
            Doc("Image to scan instead of building one from the source"),
        ] = None,
    ) -> dagger.File:
        """Scan the image and the source with Trivy and return the image report."""
        run = await self._start()
        if image is not None:
            run.backend.images[SCANNED_IMAGE] = image
            run.prepared.context.image = SCANNED_IMAGE
        record = await run.execute(["scan"])
        _report_or_raise(record)
        report = Path(scan_step.IMAGE_REPORT).name
        return dag.host().file(str(record.reports_dir / report))

    @function
    async def ci(self) -> str:
        """Run lint, test, build and scan, concurrently where they are independent."""
        run = await self._start()
        return _report_or_raise(await run.execute(ALL_STEPS))

    @function(cache="never")
    async def publish(
        self,
        commit: Annotated[
            str, Doc("Full commit hash of the source, such as $GITHUB_SHA or $CI_COMMIT_SHA")
        ],
        environment: Annotated[
            str, Doc("Environment whose registry receives the image (a key of [environments])")
        ] = "",
        address: Annotated[
            str, Doc("Repository to push to instead of an environment's, as host[:port]/path/name")
        ] = "",
        tag: Annotated[
            str, Doc("Git tag on the commit, such as v1.4.0; empty for a branch build")
        ] = "",
        username: Annotated[
            str, Doc("Registry user (default: the environment's registry.username)")
        ] = "",
        password: Annotated[
            dagger.Secret | None, Doc("Registry password or token, such as env://REGISTRY_PASSWORD")
        ] = None,
        actor: Annotated[
            str, Doc("Who started the publish, for the audit trail, such as $GITHUB_ACTOR")
        ] = "",
    ) -> str:
        """Build, scan and push the image with its commit and version tags; return REPOSITORY@sha256:..."""
        with _explained():
            source = _Commit(release_inputs.check_commit(commit), tag.strip())
            credentials = _Credentials(username.strip(), password)
            name, overrides = release_inputs.publish_target(
                environment.strip(), address.strip(), credentials.username, password is not None
            )
        folder = await self._export()
        run = self._prepare(folder, overrides, source)
        with _explained():
            env = deploy.environment(run.prepared.settings, name)
            credentials.file_password(name, env)
            run.backend.inputs.secrets.update(credentials.secrets)
            _prepare_publish(run.prepared, name)
        record = await run.execute([publish_step.NAME])
        _audit_publish(run.prepared, actor.strip())
        _report_or_raise(record)
        return _published(run.prepared)

    @function(cache="never")
    async def release(
        self,
        tag: Annotated[
            str, Doc("Release tag on the commit, such as v1.4.0; picks the environment by release_tags")
        ],
        commit: Annotated[
            str, Doc("Full commit hash of the source, such as $GITHUB_SHA or $CI_COMMIT_SHA")
        ],
        tool_source: Annotated[
            dagger.Directory,
            DefaultPath("/"),
            Ignore(TOOL_SOURCE_IGNORE),
            Doc("This pipeline's repository, whose Dockerfile builds the deploy container"),
        ],
        username: Annotated[
            str, Doc("Registry user (default: the environment's registry.username)")
        ] = "",
        password: Annotated[
            dagger.Secret | None, Doc("Registry password or token, such as env://REGISTRY_PASSWORD")
        ] = None,
        secrets: Annotated[
            list[dagger.Secret] | None,
            Doc("Secrets that the environment names, by the same references, such as env://APP_TOKEN"),
        ] = None,
        docker_socket: Annotated[
            dagger.Socket | None,
            Doc("Docker socket of the swarm manager, such as /var/run/docker.sock (Docker Swarm)"),
        ] = None,
        kubeconfig: Annotated[
            dagger.Secret | None, Doc("kubeconfig file, such as file://$HOME/.kube/config (Kubernetes)")
        ] = None,
        approved_by: Annotated[
            str, Doc("Who approved the deploy, for environments that need an approval")
        ] = "",
        actor: Annotated[
            str, Doc("Who started the release, for the audit trail, such as $GITHUB_ACTOR")
        ] = "",
    ) -> str:
        """Run ci, push the image and deploy it to the environment that the tag maps to."""
        with _explained():
            source = _Commit(
                release_inputs.check_commit(commit), release_inputs.check_release_tag(tag)
            )
            credentials = _Credentials(username.strip(), password)
        folder = await self._export()
        run = self._prepare(folder, {}, source)
        with _explained():
            name = deploy.release_environment(run.prepared.settings, source.tag)
            # The deploy container reads these settings, without --username.
            env = deploy.environment(run.prepared.settings, name)
            credentials.file_password(name, env)
        if credentials.username:
            overrides = release_inputs.user_override(name, credentials.username)
            run = self._prepare(folder, overrides, source)
        # NOTE: the engine (v0.21.8) keys a `secret(uri:)` by its value, so two
        # given secrets with equal values may report one URI, and then the
        # other counts as missing. Not run against an engine.
        for secret in secrets or []:
            credentials.secrets.setdefault(await secret.uri(), secret)
        inputs = DeployInputs(
            environment=name,
            settings=env,
            project=self.source,
            config=self.config,
            config_name=folder.config_name,
            docker_socket=docker_socket,
            kubeconfig=kubeconfig,
            secrets=credentials.secrets,
            values=release_inputs.user_values(env, credentials.username),
            approved_by=approved_by.strip() or None,
            actor=actor.strip() or None,
        )
        with _explained():
            # Everything the deploy needs, its approval included, before anything runs.
            release_inputs.check_inputs(inputs)
            deploy.approval(name, env, inputs.approved_by)
            run.backend.inputs.secrets.update(credentials.secrets)
            _prepare_publish(run.prepared, name)

        summary = _report_or_raise(await run.execute(ALL_STEPS))
        published = await _publish_scanned(run, inputs.actor or "")
        tool = release_inputs.tool_image(tool_source, kubernetes=env.target.kind == "kubernetes")
        deployer = release_inputs.deploy_container(tool, inputs, published, run.prepared.record.run_id)
        deployed = await _deploy(deployer, name, published)
        return f"{summary}published {published}\n{deployed}"

    async def _start(self) -> _Run:
        """Export the source and settings into this container and prepare a run."""
        return self._prepare(await self._export(), {}, None)

    async def _export(self) -> _Export:
        """Export the source and the settings file into this container."""
        workdir = Path(tempfile.mkdtemp(prefix="pipeline-"))
        project_dir = workdir / _folder_name(await self.source.name())
        await self.source.export(str(project_dir))
        if self.config is None:
            return _Export(project_dir)
        config_name = await self.config.name()
        config_file = workdir / "config" / config_name
        await self.config.export(str(config_file))
        return _Export(project_dir, config_file)

    def _prepare(
        self, folder: _Export, overrides: dict[str, Any], source: _Commit | None
    ) -> _Run:
        """Load the settings and prepare a run on the exported source."""
        try:
            prepared = prepare(folder.project_dir, folder.config_file, overrides, engine="dagger")
        except PipelineError as exc:
            raise PipelineFailed(_explain(exc)) from None
        if source is not None:
            # The build step then tags and labels the image with the commit.
            prepared.project.git = source.git()
        directories = {prepared.project.path: self.source}
        backend = DaggerBackend(Inputs(dag, prepared.redactor, directories=directories))
        return _Run(prepared, backend)


def _prepare_publish(prepared: Prepared, environment: str) -> None:
    """Check the publish before anything runs, and have the scan write the SBOM."""
    context = prepared.context
    context.environment = environment
    spec = publish_step.describe(context, image="")
    check_registry(spec.repository)
    context.sbom = prepared.settings.publish.sbom


@contextlib.contextmanager
def _explained() -> Iterator[None]:
    """Turn the library's errors into the module's, with the hint in the message."""
    try:
        yield
    except PipelineError as exc:
        raise PipelineFailed(_explain(exc)) from None


def _audit_publish(prepared: Prepared, actor: str) -> None:
    """Append the publish to the audit trail and print the line to the log.

    The trail's file is in the module's copy of the source, which ends with
    the call, so the log line on stderr is the record that remains. Without
    ``actor`` the trail names the module container's user.
    """
    entry = publish_step.audit_entry(prepared.context, actor)
    if entry is None:
        return
    trail = Trail.for_project(
        prepared.project.path, prepared.settings.audit.path, prepared.redactor, echo=_log
    )
    trail.append(entry)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _published(prepared: Prepared) -> str:
    published = prepared.context.published
    assert published is not None, "a passed publish step records what it pushed"
    return published.reference


async def _publish_scanned(run: _Run, actor: str) -> str:
    """Push the image that the run built and scanned, without scanning it again."""
    context = run.prepared.context
    try:
        [result] = await run_graph([STEPS[publish_step.NAME]], context, run.backend, _ignore_event)
    except PipelineError as exc:
        raise PipelineFailed("publish failed, so nothing was deployed: " + _explain(exc)) from None
    record = run.prepared.record
    record.results.append(result)
    write_record(record)
    _audit_publish(run.prepared, actor)
    if not result.ok:
        raise PipelineFailed(f"publish failed, so nothing was deployed: {result.summary}")
    return _published(run.prepared)


async def _deploy(container: dagger.Container, environment: str, image: str) -> str:
    """Run the deploy container and return its messages, or raise with them."""
    try:
        exit_code = await container.exit_code()
        stdout = await container.stdout()
        stderr = await container.stderr()
    except dagger.QueryError as exc:
        raise PipelineFailed(
            f"published {image}, but the deploy to {environment} could not start: {exc}"
        ) from None
    if exit_code != 0:
        last_lines = "\n".join(stderr.strip().splitlines()[-DEPLOY_ERROR_LINES:])
        raise PipelineFailed(
            f"published {image}, but the deploy to {environment} failed with exit "
            f"code {exit_code}:\n{last_lines}"
        )
    try:
        outcome = json.loads(stdout)
    except json.JSONDecodeError:
        outcome = {}
    status = outcome.get("status", "deployed") if isinstance(outcome, dict) else "deployed"
    return f"{stderr.rstrip()}\ndeploy: {environment} {status} {image}\n"


def _folder_name(directory_name: str) -> str:
    """Name the export folder after the source, since the image is named after it."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", directory_name).strip("-.")
    return name or "project"


def _ignore_event(name: str, status: Status, result: StepResult | None) -> None:
    return None


def _explain(exc: PipelineError) -> str:
    return exc.message + (f"\nHint: {exc.hint}" if exc.hint else "")


def _report_or_raise(record: RunRecord) -> str:
    """Return the run's summary as text, or raise it when a step failed."""
    console = Console(file=io.StringIO(), width=REPORT_WIDTH, color_system=None)
    console.print(summary_table(record.results))
    for result in record.results:
        if result.status is Status.FAILED:
            console.print(failure_details(result), soft_wrap=True)
    text: str = console.file.getvalue()  # type: ignore[attr-defined]
    if not record.ok:
        failed = [r.name for r in record.results if r.status is Status.FAILED]
        raise PipelineFailed(f"failed: {', '.join(failed)}\n{text}")
    return text
