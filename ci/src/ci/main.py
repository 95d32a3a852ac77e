"""The module's functions: thin wrappers that run the pipeline's steps on Dagger.

Each call exports the source into the module's container, so the library
reads the settings, ignore files and Dockerfile from disk as it does on a
host. The steps then run through the Dagger backend, which maps that folder
back onto the source Directory instead of uploading the files again.

NOTE: inside a module, ``Directory.export`` and ``dag.host()`` use the
module's own container, as dagger/dagger#5867 and #8706 describe. This has
not been run against an engine.
"""

import io
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import dagger
from dagger import DefaultPath, Doc, Ignore, dag, function, object_type
from rich.console import Console

from pipeline.backends.dagger import DaggerBackend, Inputs
from pipeline.errors import PipelineError
from pipeline.results import Status, StepResult
from pipeline.run import Prepared, RunRecord, execute, prepare, write_record
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


@object_type
class Ci:
    """The rgbridge pipeline: lint, test, build and scan a Python project."""

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
        address: Annotated[str, Doc("Image reference to push to")],
        username: Annotated[str, Doc("Registry user")] = "",
        password: Annotated[dagger.Secret | None, Doc("Registry password")] = None,
    ) -> str:
        """Push the built image to a registry (not implemented yet: always fails)."""
        raise PipelineFailed(
            "publish is not implemented yet, so nothing was pushed. Until it is, "
            "push the image with `dagger call build publish --address=ADDRESS`"
        )

    @function(cache="never")
    async def release(
        self,
        version: Annotated[str, Doc("Version to release, such as 1.4.0")],
        address: Annotated[str, Doc("Image repository to push the release to")],
        username: Annotated[str, Doc("Registry user")] = "",
        password: Annotated[dagger.Secret | None, Doc("Registry password")] = None,
    ) -> str:
        """Publish a tagged release (not implemented yet: always fails)."""
        raise PipelineFailed(
            f"release is not implemented yet, so version {version} was not "
            "released and nothing was pushed"
        )

    async def _start(self) -> _Run:
        """Export the source and settings into this container and prepare a run."""
        workdir = Path(tempfile.mkdtemp(prefix="pipeline-"))
        project_dir = workdir / _folder_name(await self.source.name())
        await self.source.export(str(project_dir))
        config_file = None
        if self.config is not None:
            config_file = workdir / "config" / await self.config.name()
            await self.config.export(str(config_file))
        try:
            prepared = prepare(project_dir, config_file, engine="dagger")
        except PipelineError as exc:
            raise PipelineFailed(_explain(exc)) from None
        directories = {prepared.project.path: self.source}
        backend = DaggerBackend(Inputs(dag, prepared.redactor, directories=directories))
        return _Run(prepared, backend)


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
