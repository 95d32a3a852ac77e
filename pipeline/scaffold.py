"""`pipeline init`: add the settings, CI wrappers and a Dockerfile to a project.

Every file comes from a template in ``pipeline/templates``. A file that
exists is kept unless the caller forces an overwrite, and an existing
``pyproject.toml`` is only ever appended to.
"""

from __future__ import annotations

import re
import string
import tomllib
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path

from . import __version__
from .errors import UsageError
from .project import Project

# The Dagger CLI version the wrappers install: the module's engineVersion in
# dagger.json, without the "v".
DAGGER_VERSION = "0.21.8"
# NOTE: the repository has no public address yet. This is the address it is
# expected to be published at; pass --module until it is.
DEFAULT_MODULE = f"github.com/rgbridge/rgbridge-pipeline@v{__version__}"
# The same release as the command that writes the wrappers.
DEFAULT_REQUIREMENT = f"rgbridge-pipeline=={__version__}"

GITHUB_WORKFLOW = ".github/workflows/ci.yml"
GITLAB_CI = ".gitlab-ci.yml"
FORCE_HINT = "exists; --force overwrites it"


class Wrappers(StrEnum):
    """The program that the written CI wrappers call: the command or the module."""

    CLI = "cli"
    DAGGER = "dagger"


class Action(StrEnum):
    WROTE = "wrote"
    APPENDED = "appended"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Outcome:
    """The result of init for one file, with the reason when it was left alone."""

    path: str
    action: Action
    reason: str = ""

    def describe(self) -> str:
        text = f"{self.action.value:<9}{self.path}"
        return f"{text} ({self.reason})" if self.reason else text


class _Template(string.Template):
    # "$" is taken by GitHub expressions and shell variables in the templates.
    delimiter = "%"


def render(name: str, **values: str) -> str:
    """Fill in a template from pipeline/templates. A missing value raises KeyError."""
    text = resources.files("pipeline").joinpath("templates", name).read_text()
    return _Template(text).substitute(values)


def init_project(
    path: Path,
    wrappers: Wrappers = Wrappers.CLI,
    module: str = DEFAULT_MODULE,
    requirement: str = DEFAULT_REQUIREMENT,
    force: bool = False,
) -> list[Outcome]:
    """Write the settings, both CI wrappers and, when missing, a Dockerfile.

    ``force`` overwrites the wrappers and pipeline.toml, never a Dockerfile or
    an existing [tool.pipeline] table. Raises UsageError for a path that is not a project or whose
    pyproject.toml is not valid TOML.
    """
    project = Project.open(path)
    root = project.path
    outcomes = [_add_settings(root, force)]

    values = {
        "module": module,
        "requirement": requirement,
        "dagger_version": DAGGER_VERSION,
    }
    for target, template in (
        (GITHUB_WORKFLOW, f"github-{wrappers.value}.yml"),
        (GITLAB_CI, f"gitlab-{wrappers.value}.yml"),
    ):
        outcomes.append(_write(root, target, render(template, **values), force))

    if (root / "Dockerfile").exists():
        reason = "the project has one; init writes one only where none exists"
        outcomes.append(Outcome("Dockerfile", Action.SKIPPED, reason))
    else:
        dockerfile = render(
            "Dockerfile", install=_install_lines(project), package=_package_name(project)
        )
        outcomes.append(_write(root, "Dockerfile", dockerfile, force))
        outcomes.append(_write(root, ".dockerignore", render("dockerignore"), force))
    return outcomes


def _write(root: Path, relative: str, text: str, force: bool) -> Outcome:
    target = root / relative
    if target.exists() and not force:
        return Outcome(relative, Action.SKIPPED, FORCE_HINT)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return Outcome(relative, Action.WROTE)


def _add_settings(root: Path, force: bool) -> Outcome:
    """Append [tool.pipeline] to pyproject.toml, else write pipeline.toml.

    An existing [tool.pipeline] table is never changed, even with --force,
    because the rest of the user's file must stay as it is.
    """
    pyproject = root / "pyproject.toml"
    pipeline_toml = root / "pipeline.toml"
    if pipeline_toml.exists():
        if not force:
            return Outcome("pipeline.toml", Action.SKIPPED, FORCE_HINT)
        return _write(root, "pipeline.toml", render("config.toml", table=""), force)
    if not pyproject.is_file():
        return _write(root, "pipeline.toml", render("config.toml", table=""), force)

    original = pyproject.read_text()
    data = _parse_toml(original, pyproject)
    tool = data.get("tool")
    if isinstance(tool, dict) and "pipeline" in tool:
        return Outcome(
            "pyproject.toml",
            Action.SKIPPED,
            "it has a [tool.pipeline] table; init never changes an existing one",
        )
    separator = "" if original.endswith("\n") or not original else "\n"
    appended = original + separator + "\n" + render("config.toml", table="tool.pipeline.")
    try:
        tomllib.loads(appended)
    except tomllib.TOMLDecodeError:
        # An inline `tool = {...}` table cannot be extended by a new header.
        return _write(root, "pipeline.toml", render("config.toml", table=""), force)
    with pyproject.open("a") as handle:
        handle.write(appended[len(original):])
    return Outcome("pyproject.toml", Action.APPENDED, "[tool.pipeline]")


def _parse_toml(text: str, path: Path) -> dict[str, object]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(
            f"invalid TOML in {path}: {exc}",
            hint="fix the file, then run pipeline init again",
        ) from None


def _install_lines(project: Project) -> str:
    """Write the Dockerfile lines that copy the project and install it."""
    pip = (
        "RUN --mount=type=secret,id=ca \\\n"
        "    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \\\n"
        "    pip install {arguments}\n"
    )
    lines = []
    if (project.path / "requirements.txt").is_file():
        lines += [
            "# Requirements come first, so that a code change reuses the dependency",
            "# layer. A build secret named \"ca\" lets pip trust a TLS-inspecting proxy.",
            "COPY requirements.txt .",
            pip.format(arguments="-r requirements.txt").rstrip("\n"),
            "",
        ]
    lines.append("COPY . .")
    if project.is_installable:
        lines.append(pip.format(arguments=".").rstrip("\n"))
    return "\n".join(lines) + "\n"


def _package_name(project: Project) -> str:
    """Guess the module that `python -m` starts: the project's import name."""
    for child in sorted(project.path.iterdir()):
        if (child / "__init__.py").is_file() and child.name not in ("tests", "test"):
            return child.name
    name = project.path.name
    pyproject = project.path / "pyproject.toml"
    if pyproject.is_file():
        data = _parse_toml(pyproject.read_text(), pyproject)
        project_table = data.get("project")
        if isinstance(project_table, dict) and isinstance(project_table.get("name"), str):
            name = project_table["name"]
    return re.sub(r"[^A-Za-z0-9_]", "_", name).lower() or "app"
