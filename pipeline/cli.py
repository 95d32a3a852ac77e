"""The `pipeline` command. Exit codes are decided here and only here."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import click
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from . import __version__
from .audit import Entry, Trail
from .backends import ENGINE_CHOICES, Backend, choose_engine, open_backend
from .config import Settings, load_settings
from .deploy import APPROVED_BY_ENV, Deployer, release_environment
from .deploy.base import Outcome
from .errors import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Interrupted,
    PipelineError,
    StepFailed,
    UsageError,
)
from .graph import plan
from .project import Project
from .reports import RECORD_FILE_NAME
from .reports import github_annotations, gitlab_sections
from .results import Status, StepResult
from .secrets import Redactor, redact
from .run import Prepared, RunRecord, execute, prepare, write_record
from .scaffold import DEFAULT_MODULE, DEFAULT_REQUIREMENT, Wrappers, init_project
from .steps import build as build_step
from .steps import publish as publish_step
from .ui import LiveView, failure_details, summary_table

log = logging.getLogger("pipeline")
stderr = Console(stderr=True)
if not stderr.is_terminal and "COLUMNS" not in os.environ:
    # CI logs are not terminals: rich would wrap at 80 columns and split
    # paths and messages that people search for.
    stderr.width = 160
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    help="Settings file (pipeline.toml, or a pyproject.toml with [tool.pipeline]).",
)


def common_options(function: Callable[..., Any]) -> Callable[..., Any]:
    function = click.argument(
        "path",
        type=click.Path(path_type=Path),
        default=".",
        required=False,
    )(function)
    function = config_option(function)
    function = click.option(
        "--json", "as_json", is_flag=True, help="Print the run record as JSON on stdout."
    )(function)
    function = click.option(
        "--engine",
        type=click.Choice(ENGINE_CHOICES),
        default="auto",
        show_default=True,
        envvar="PIPELINE_ENGINE",
        help="Container engine: docker, dagger, or auto (Dagger when a Dagger "
        "session or CLI is present, else the Docker Engine).",
    )(function)
    return function


@click.group()
@click.version_option(__version__, prog_name="pipeline")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """Lint, test, build, scan, publish and deploy a Python project in containers."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=stderr, show_path=False)],
    )


def _run(
    steps: list[str],
    path: Path,
    config_file: Path | None,
    as_json: bool,
    engine: str,
    overrides: dict[str, Any] | None = None,
    image: str | None = None,
    environment: str | None = None,
) -> Prepared:
    """Run the steps and report them; return the run's state for release.

    Raises StepFailed or Interrupted after the reports are written.
    """
    # Settings come first, so that an invalid one is a usage error (exit 2)
    # even where no engine is available.
    prepared = prepare(path, config_file, overrides)
    choice = choose_engine(engine)
    prepared.record.engine = choice.name
    if image is not None:
        prepared.context.image = image
    prepared.context.environment = environment
    names = [step.name for step in plan(steps) if not (image and step.name == "build")]
    if build_step.NAME in names:
        # Checks the Dockerfile, so that a missing one is a usage error (exit 2)
        # even when no engine is reachable.
        build_step.describe(prepared.context)
    if publish_step.NAME in names:
        # The environment, a committed tree, the credentials' references and
        # the audit trail, before the build, so that nothing runs for a
        # publish that cannot be done or recorded.
        publish_step.check(prepared.context, prepared.redactor)
        _trail(prepared.project.path, prepared.settings, prepared.redactor).check()
    stderr.print(f"engine: {choice.describe()}", highlight=False)
    record = anyio.run(_run_async, prepared, steps, names)
    _report(record, as_json)
    if publish_step.NAME in names:
        _audit_publish(prepared)
    if record.interrupted:
        raise Interrupted("interrupted; the run's containers were removed")
    if not record.ok:
        failed = [r.name for r in record.results if r.status is Status.FAILED]
        noun = "step" if len(failed) == 1 else "steps"
        raise StepFailed(f"{noun} failed: {', '.join(failed)}")
    return prepared


def _audit_publish(prepared: Prepared) -> None:
    entry = publish_step.audit_entry(prepared.context)
    if entry is not None:
        _trail(prepared.project.path, prepared.settings, prepared.redactor).append(entry)


def _trail(root: Path, settings: Settings, redactor: Redactor) -> Trail:
    def echo(line: str) -> None:
        stderr.print(escape(line), highlight=False, soft_wrap=True)

    return Trail.for_project(root, settings.audit.path, redactor, echo=echo)


async def _run_async(prepared: Prepared, steps: list[str], names: list[str]) -> RunRecord:
    """Run the steps with signal handling that covers cleanup as well."""
    record = prepared.record
    run_scope = anyio.CancelScope()
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(_watch_signals, run_scope, record)
            try:
                await _run_steps(prepared, steps, names, run_scope)
            finally:
                group.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise _first_pipeline_error(group) from None
    return record


async def _run_steps(
    prepared: Prepared, steps: list[str], names: list[str], run_scope: anyio.CancelScope
) -> None:
    record = prepared.record
    backend: Backend | None = None
    try:
        with run_scope:
            backend = await open_backend(
                record.engine, record.run_id, prepared.redactor, prepared.settings
            )
            with LiveView(stderr, names) as view:
                await execute(prepared, steps, backend, view.update)
    except BaseExceptionGroup as group:
        raise _first_pipeline_error(group) from None
    finally:
        if record.interrupted:
            finished = prepared.context.results
            record.results = [
                finished.get(name) or StepResult(name, Status.CANCELLED, "interrupted")
                for name in names
            ]
        if backend is not None:
            with anyio.CancelScope(shield=True):
                await backend.close()


async def _watch_signals(run_scope: anyio.CancelScope, record: RunRecord) -> None:
    """Cancel the run on the first SIGINT, SIGTERM or SIGHUP.

    The receiver stays open until cleanup has finished, so a second signal
    cannot kill the process while it removes the run's containers.
    """
    with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async for received in signals:
            name = signal.Signals(received).name
            if record.interrupted:
                log.warning("received %s again; still removing the run's containers", name)
                continue
            log.warning("received %s, stopping the run", name)
            record.interrupted = True
            run_scope.cancel()


def _first_pipeline_error(group: BaseExceptionGroup[Any]) -> BaseException:
    """Unwrap a task group's errors so that an expected one reads as usual."""
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            error = _first_pipeline_error(error)
        if isinstance(error, PipelineError):
            return error
    return group


def _report(record: RunRecord, as_json: bool) -> None:
    for result in record.results:
        # A step's summary may quote a registry's or tool's message that
        # repeats a credential, such as a rejected user name.
        result.summary = redact(result.summary)
        result.output = redact(result.output)
    record_path = write_record(record)
    if record.results:
        stderr.print(summary_table(record.results))
    sections = gitlab_sections(record, os.environ)
    if sections is not None:
        # Written as is, since click and rich would strip the escape codes.
        sys.stderr.write(sections)
        sys.stderr.flush()
    else:
        for result in record.results:
            if result.status is Status.FAILED:
                stderr.print(failure_details(result), soft_wrap=True)
    if record_path is not None:
        stderr.print(f"reports: {escape(str(record.reports_dir))}", highlight=False)
    # The GitHub runner reads workflow commands from stdout and stderr alike
    # (actions/runner, ScriptHandler.cs), so with --json they go to stderr.
    annotations = github_annotations(record, os.environ)
    if annotations:
        click.echo("\n".join(annotations), err=as_json)
    if as_json:
        click.echo(json.dumps(record.to_dict(), indent=2))


@cli.command()
@common_options
def ci(path: Path, config_file: Path | None, as_json: bool, engine: str) -> None:
    """Run lint, test, build and scan."""
    _run(["lint", "test", "build", "scan"], path, config_file, as_json, engine)


@cli.command()
@common_options
def lint(path: Path, config_file: Path | None, as_json: bool, engine: str) -> None:
    """Run flake8 with the project's configuration."""
    _run(["lint"], path, config_file, as_json, engine)


@cli.command()
@common_options
def test(path: Path, config_file: Path | None, as_json: bool, engine: str) -> None:
    """Install the project and run pytest."""
    _run(["test"], path, config_file, as_json, engine)


@cli.command()
@common_options
def build(path: Path, config_file: Path | None, as_json: bool, engine: str) -> None:
    """Build the project's image with BuildKit."""
    _run(["build"], path, config_file, as_json, engine)


@cli.command()
@common_options
@click.option(
    "--image", metavar="IMAGE", help="Scan this local image instead of building one."
)
def scan(
    path: Path, config_file: Path | None, as_json: bool, engine: str, image: str | None
) -> None:
    """Scan the image (built first unless --image) and the source with Trivy."""
    _run(["scan"], path, config_file, as_json, engine, image=image)


@cli.command()
@common_options
@click.option(
    "--env",
    "environment",
    metavar="NAME",
    required=True,
    help="Environment whose registry receives the image (a key of [environments]).",
)
def publish(
    path: Path, config_file: Path | None, as_json: bool, engine: str, environment: str
) -> None:
    """Build and scan the image, then push it to the environment's registry.

    Tags: the full commit hash, X.Y.Z, X.Y and X for a vX.Y.Z tag on the
    commit, and latest as publish.latest sets. The work tree must be committed.
    """
    _run(["publish"], path, config_file, as_json, engine, environment=environment)


@cli.command()
@click.argument("path", type=click.Path(path_type=Path), default=".", required=False)
@click.option(
    "--wrappers",
    type=click.Choice([choice.value for choice in Wrappers]),
    default=Wrappers.CLI.value,
    show_default=True,
    help="What the CI wrappers call: cli installs and runs the pipeline command, "
    "dagger calls the Dagger module with `dagger -m MODULE call`.",
)
@click.option(
    "--module",
    default=DEFAULT_MODULE,
    show_default=True,
    help="Address of the Dagger module that --wrappers dagger calls.",
)
@click.option(
    "--requirement",
    default=DEFAULT_REQUIREMENT,
    show_default=True,
    help="pip requirement that --wrappers cli installs the pipeline with.",
)
@click.option(
    "--force", is_flag=True, help="Overwrite the CI wrappers and pipeline.toml."
)
def init(path: Path, wrappers: str, module: str, requirement: str, force: bool) -> None:
    """Add settings, GitHub and GitLab CI wrappers and a Dockerfile to a project.

    Existing files are kept (listed as skipped) unless --force is given. A
    pyproject.toml without [tool.pipeline] gets the table appended; a Dockerfile
    is written only where none exists.
    """
    outcomes = init_project(path, Wrappers(wrappers), module, requirement, force)
    for outcome in outcomes:
        click.echo(outcome.describe())


def deploy_options(function: Callable[..., Any]) -> Callable[..., Any]:
    function = click.option(
        "-C",
        "--project",
        "project_path",
        type=click.Path(path_type=Path),
        default=".",
        show_default=True,
        help="Project whose settings name the environments.",
    )(function)
    function = config_option(function)
    function = click.option(
        "--json", "as_json", is_flag=True, help="Print the outcome as JSON on stdout."
    )(function)
    return function


def approval_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--approved-by",
        metavar="NAME",
        envvar=APPROVED_BY_ENV,
        help=f"Who approved the deploy; needed where the environment sets "
        f"`approval` (or set {APPROVED_BY_ENV}).",
    )(function)


@contextmanager
def _interruptible() -> Iterator[None]:
    """Turn SIGINT, SIGTERM and SIGHUP into Interrupted while a deploy runs.

    The exception unwinds through the target, which removes what a first
    deploy created, and through the audit trail, which records the attempt.
    """

    def stop(number: int, frame: object) -> None:
        name = signal.Signals(number).name
        raise Interrupted(
            f"received {name} during the deploy; the orchestrator may still "
            "finish or roll back the rollout that had started",
            hint="check what the environment runs before deploying again",
        )

    previous = {number: signal.signal(number, stop) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _deployer(project_path: Path, config_file: Path | None) -> Deployer:
    # Deploys read only the settings; the folder need not be a Python project.
    root = project_path.resolve()
    if not root.is_dir():
        raise UsageError(
            f"project folder not found: {project_path}",
            hint="pass the folder that holds the settings with -C PATH",
        )
    settings = load_settings(root, config_file).settings
    redactor = Redactor()

    def progress(message: str) -> None:
        stderr.print(escape(redactor(message)), highlight=False, soft_wrap=True)

    trail = _trail(root, settings, redactor)
    return Deployer(root, settings, redactor, trail, progress, root / settings.reports_dir)


def _print_outcome(action: str, environment: str, outcome: Outcome, as_json: bool) -> None:
    verb = {"deployed": "now runs", "unchanged": "already ran", "rolled_back": "rolled back to"}
    stderr.print(
        f"{action}: {escape(environment)} {verb[outcome.status]} {escape(outcome.image)}",
        highlight=False,
        soft_wrap=True,
    )
    if as_json:
        click.echo(json.dumps(_outcome_dict(action, environment, outcome), indent=2))


def _outcome_dict(action: str, environment: str, outcome: Outcome) -> dict[str, Any]:
    return {
        "action": action,
        "environment": environment,
        "status": outcome.status,
        "image": outcome.image,
        "previous": outcome.previous,
        "detail": outcome.detail,
    }


@cli.command()
@click.argument("image", metavar="IMAGE@DIGEST")
@click.option("--env", "environment", required=True, metavar="NAME", help="Environment to deploy to.")
@approval_option
@deploy_options
def deploy(
    image: str,
    environment: str,
    approved_by: str | None,
    project_path: Path,
    config_file: Path | None,
    as_json: bool,
) -> None:
    """Roll a published image out to an environment.

    IMAGE@DIGEST is REPOSITORY@sha256:..., as `pipeline publish` prints it;
    tags are refused, so that every environment names the very image it runs.
    """
    deployer = _deployer(project_path, config_file)
    with _interruptible():
        outcome = deployer.deploy(environment, image, approved_by)
    _print_outcome("deploy", environment, outcome, as_json)


@cli.command()
@click.option("--from", "source", required=True, metavar="NAME", help="Environment whose image is promoted.")
@click.option("--to", "destination", required=True, metavar="NAME", help="Environment that receives it.")
@approval_option
@deploy_options
def promote(
    source: str,
    destination: str,
    approved_by: str | None,
    project_path: Path,
    config_file: Path | None,
    as_json: bool,
) -> None:
    """Deploy the digest that one environment runs to another, without a rebuild."""
    deployer = _deployer(project_path, config_file)
    with _interruptible():
        outcome = deployer.promote(source, destination, approved_by)
    _print_outcome("promote", destination, outcome, as_json)


@cli.command()
@click.option("--env", "environment", required=True, metavar="NAME", help="Environment to roll back.")
@deploy_options
def rollback(environment: str, project_path: Path, config_file: Path | None, as_json: bool) -> None:
    """Return an environment to the image it ran before its last deploy."""
    deployer = _deployer(project_path, config_file)
    with _interruptible():
        outcome = deployer.rollback(environment)
    _print_outcome("rollback", environment, outcome, as_json)


RELEASE_STEPS = ["lint", "test", "build", "scan", "publish"]


@cli.command()
@common_options
@approval_option
def release(
    path: Path, config_file: Path | None, as_json: bool, engine: str, approved_by: str | None
) -> None:
    """Run ci, publish the image and deploy it for the commit's git tag.

    The environment is the first one whose release_tags match the tag. Its
    approval is checked before anything runs, and the deploy uses the digest
    that the publish step pushed.
    """
    project = Project.open(path)
    settings = load_settings(project.path, config_file).settings
    tag = project.git.tag if project.git is not None else None
    name = release_environment(settings, tag)
    deployer = _deployer(project.path, config_file)
    deployer.trail.check()
    deployer.check_approval(name, approved_by, Entry("deploy", name, None, detail=f"release {tag}"))
    stderr.print(f"release: {escape(str(tag))} goes to {escape(name)}", highlight=False)
    try:
        prepared = _run(RELEASE_STEPS, path, config_file, False, engine, environment=name)
    except StepFailed:
        if as_json:
            click.echo(json.dumps({"run": _run_record(project.path, settings), "deploy": None}, indent=2))
        raise
    published = prepared.context.published
    if published is None:  # the publish step passed, so it set this
        raise StepFailed("publish passed but recorded no image reference")
    with _interruptible():
        outcome = deployer.deploy(name, published.reference, approved_by, detail=f"release {tag}")
    _print_outcome("deploy", name, outcome, as_json=False)
    if as_json:
        document = {
            "run": _run_record(project.path, settings),
            "deploy": _outcome_dict("deploy", name, outcome),
        }
        click.echo(json.dumps(document, indent=2))


def _run_record(root: Path, settings: Settings) -> Any:
    try:
        return json.loads((root / settings.reports_dir / RECORD_FILE_NAME).read_text())
    except (OSError, ValueError):
        return None


def main() -> None:
    """Run the CLI and turn every outcome into its exit code."""
    try:
        exit_code = cli.main(standalone_mode=False)
    except PipelineError as exc:
        # Not wrapped, so that a message stays one line to search for in logs.
        stderr.print(f"[bold red]Error:[/] {escape(redact(exc.message))}", soft_wrap=True)
        if exc.hint:
            stderr.print(f"Hint: {escape(redact(exc.hint))}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        stderr.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(exit_code if isinstance(exit_code, int) else 0)
