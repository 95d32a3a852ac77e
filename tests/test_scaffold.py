"""`pipeline init`: the files it writes, what it keeps, and a run on the result.

The written wrappers go through the same checks as this repository's own
(test_wrappers.py): the validators, and every `pipeline` and `dagger call`
command against the real command and the module's registration.
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path
from typing import Any

import graphql
import pytest

from conftest import REPO_ROOT, ProjectFactory, RunCli
from pipeline import scaffold
from wrapper_checks import (
    GITLAB_REPORTS,
    check_actionlint,
    check_dagger_commands,
    check_github_workflow,
    check_gitlab_ci,
    check_jsonschema,
    check_only_pipeline_or_dagger,
    check_pipeline_commands,
    load_yaml,
)

# The Dagger fixtures live beside the Dagger tests, which import them by name.
if str(REPO_ROOT / "tests" / "dagger") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "tests" / "dagger"))
pytest_plugins = ["dagger_fixtures"]

# A project with nothing but code, a passing test and pyproject.toml, which
# flake8 finds clean.
BARE_PROJECT = {
    "pyproject.toml": (
        "[project]\n"
        'name = "bare-app"\n'
        'version = "0.1.0"\n'
        "\n"
        "[tool.pytest.ini_options]\n"
        'testpaths = ["tests"]\n'
    ),
    "bare_app/__init__.py": (
        "def add(left, right):\n"
        "    return left + right\n"
    ),
    "tests/test_add.py": (
        "from bare_app import add\n"
        "\n"
        "\n"
        "def test_add():\n"
        "    assert add(2, 3) == 5\n"
    ),
}
WRITTEN = [
    "pyproject.toml",
    ".github/workflows/ci.yml",
    ".gitlab-ci.yml",
    "Dockerfile",
    ".dockerignore",
]


@pytest.fixture
def bare_project(project_factory: ProjectFactory) -> Path:
    return project_factory(BARE_PROJECT, name="bare-app")


def init(run_cli: RunCli, root: Path, *options: str) -> list[tuple[str, str, str]]:
    """Run `pipeline init` and return (action, path, reason) for each line."""
    result = run_cli("init", str(root), *options)
    assert result.returncode == 0, result.output
    outcomes = []
    for line in result.stdout.splitlines():
        action, _, rest = line.partition(" ")
        path, _, reason = rest.strip().partition(" (")
        outcomes.append((action, path, reason.removesuffix(")")))
    return outcomes


# -- written files ----------------------------------------------------------------


def test_init_writes_every_file(bare_project: Path, run_cli: RunCli) -> None:
    outcomes = init(run_cli, bare_project)

    assert [(action, path) for action, path, _ in outcomes] == [
        ("appended", "pyproject.toml"),
        ("wrote", ".github/workflows/ci.yml"),
        ("wrote", ".gitlab-ci.yml"),
        ("wrote", "Dockerfile"),
        ("wrote", ".dockerignore"),
    ]
    for path in WRITTEN:
        assert (bare_project / path).is_file(), path


def test_init_appends_to_pyproject(bare_project: Path, run_cli: RunCli) -> None:
    original = (bare_project / "pyproject.toml").read_text()

    init(run_cli, bare_project)

    text = (bare_project / "pyproject.toml").read_text()
    assert text.startswith(original)
    assert tomllib.loads(text)["tool"]["pipeline"] == {"scan": {"ignore_unfixed": True}}
    assert "CVE-2023-45853" in text
    assert not (bare_project / "pipeline.toml").exists()


def test_init_writes_pipeline_toml(project_factory: ProjectFactory, run_cli: RunCli) -> None:
    root = project_factory({"requirements.txt": "", "app.py": "X = 1\n"})

    outcomes = init(run_cli, root)

    assert ("wrote", "pipeline.toml", "") in outcomes
    settings = tomllib.loads((root / "pipeline.toml").read_text())
    assert settings == {"scan": {"ignore_unfixed": True}}
    dockerfile = (root / "Dockerfile").read_text()
    assert "COPY requirements.txt ." in dockerfile
    assert "pip install -r requirements.txt" in dockerfile


def test_init_keeps_inline_tool_table(
    project_factory: ProjectFactory, run_cli: RunCli
) -> None:
    pyproject = 'tool = { black = { line-length = 100 } }\n'
    root = project_factory({"pyproject.toml": pyproject})

    outcomes = init(run_cli, root)

    assert ("wrote", "pipeline.toml", "") in outcomes
    assert (root / "pyproject.toml").read_text() == pyproject


def test_dockerfile_template(bare_project: Path, run_cli: RunCli) -> None:
    init(run_cli, bare_project)

    lines = (bare_project / "Dockerfile").read_text().splitlines()
    assert lines[3] == "FROM python:3.11-slim"
    assert "USER 10001:10001" in lines
    assert any(line.startswith("HEALTHCHECK ") for line in lines)
    assert 'CMD ["python", "-m", "bare_app"]' in lines
    assert lines.index("USER 10001:10001") > lines.index("COPY . .")


# -- no overwrite -------------------------------------------------------------------


def test_second_init_skips_everything(bare_project: Path, run_cli: RunCli) -> None:
    init(run_cli, bare_project)
    before = {path: (bare_project / path).read_text() for path in WRITTEN}

    outcomes = init(run_cli, bare_project)

    assert [action for action, _, _ in outcomes] == ["skipped"] * 4
    for _, path, reason in outcomes:
        assert reason, f"{path} was skipped without a reason"
    for path, text in before.items():
        assert (bare_project / path).read_text() == text, path


def test_existing_files_kept(project_factory: ProjectFactory, run_cli: RunCli) -> None:
    files = {
        "pyproject.toml": '[project]\nname = "kept"\n\n[tool.pipeline]\nimage = "x:1"\n',
        "Dockerfile": "FROM scratch\n",
        ".gitlab-ci.yml": "# the team's own\n",
    }
    root = project_factory(files)

    outcomes = init(run_cli, root)

    skipped = {path: reason for action, path, reason in outcomes if action == "skipped"}
    assert set(skipped) == {"pyproject.toml", "Dockerfile", ".gitlab-ci.yml"}
    assert "[tool.pipeline]" in skipped["pyproject.toml"]
    assert "--force" in skipped[".gitlab-ci.yml"]
    for path, text in files.items():
        assert (root / path).read_text() == text, path
    assert not (root / ".dockerignore").exists()


def test_force_overwrites_wrappers(bare_project: Path, run_cli: RunCli) -> None:
    init(run_cli, bare_project)
    (bare_project / ".gitlab-ci.yml").write_text("# changed\n")
    (bare_project / "Dockerfile").write_text("FROM scratch\n")
    pyproject = (bare_project / "pyproject.toml").read_text()

    outcomes = init(run_cli, bare_project, "--force")

    assert ("wrote", ".gitlab-ci.yml", "") in outcomes
    assert (bare_project / ".gitlab-ci.yml").read_text() != "# changed\n"
    assert (bare_project / "Dockerfile").read_text() == "FROM scratch\n"
    assert (bare_project / "pyproject.toml").read_text() == pyproject


@pytest.mark.parametrize("files", [{}, {"README.md": "# notes\n"}], ids=["empty", "no-markers"])
def test_init_rejects_non_project(
    files: dict[str, str], project_factory: ProjectFactory, run_cli: RunCli
) -> None:
    root = project_factory(files)

    result = run_cli("init", str(root))

    assert result.returncode == 2
    assert "not a Python project" in result.stderr
    assert not (root / ".gitlab-ci.yml").exists()


def test_init_rejects_missing_path(tmp_path: Path, run_cli: RunCli) -> None:
    result = run_cli("init", str(tmp_path / "missing"))

    assert result.returncode == 2
    assert "project path not found" in result.stderr


def test_init_rejects_invalid_pyproject(
    project_factory: ProjectFactory, run_cli: RunCli
) -> None:
    root = project_factory({"pyproject.toml": "[project\n"})

    result = run_cli("init", str(root))

    assert result.returncode == 2
    assert "invalid TOML" in result.stderr
    assert not (root / "Dockerfile").exists()


# -- the written wrappers -----------------------------------------------------------


def test_dagger_version_matches_module() -> None:
    engine_version = json.loads((REPO_ROOT / "dagger.json").read_text())["engineVersion"]

    assert "v" + scaffold.DAGGER_VERSION == engine_version


@pytest.mark.parametrize("wrappers", ["cli", "dagger"])
def test_written_wrappers_valid(
    wrappers: str, bare_project: Path, run_cli: RunCli
) -> None:
    init(run_cli, bare_project, "--wrappers", wrappers)
    workflow = bare_project / ".github" / "workflows" / "ci.yml"
    gitlab_ci = bare_project / ".gitlab-ci.yml"

    github_result = check_jsonschema(workflow, "vendor.github-workflows")
    gitlab_result = check_jsonschema(gitlab_ci, "vendor.gitlab-ci")

    assert github_result.returncode == 0, github_result.stdout
    assert gitlab_result.returncode == 0, gitlab_result.stdout
    check_github_workflow(workflow)
    check_gitlab_ci(gitlab_ci, GITLAB_REPORTS)
    check_actionlint(workflow)


def test_cli_wrappers_commands(bare_project: Path, run_cli: RunCli) -> None:
    init(run_cli, bare_project, "--wrappers", "cli")

    calls = check_only_pipeline_or_dagger(
        bare_project / ".github" / "workflows" / "ci.yml", bare_project / ".gitlab-ci.yml"
    )

    assert {command.words[0] for command in calls} == {"pipeline"}
    assert {command.words[1] for command in calls} == {"ci", "lint", "test", "build", "scan"}
    check_pipeline_commands(calls)


def test_dagger_wrappers_commands(
    bare_project: Path,
    run_cli: RunCli,
    module_functions: dict[str, dict[str, Any]],
    dagger_schema: graphql.GraphQLSchema,
) -> None:
    module = "git.example.test/platform/rgbridge-pipeline@v9.9.9"
    init(run_cli, bare_project, "--wrappers", "dagger", "--module", module)
    workflow = bare_project / ".github" / "workflows" / "ci.yml"
    gitlab_ci = bare_project / ".gitlab-ci.yml"

    calls = check_only_pipeline_or_dagger(workflow, gitlab_ci)

    assert {command.words[0] for command in calls} == {"dagger"}
    assert all(command.words[1] == "-m" for command in calls)
    assert load_yaml(workflow)["env"]["PIPELINE_MODULE"] == module
    assert load_yaml(gitlab_ci)["variables"]["PIPELINE_MODULE"] == module
    check_dagger_commands(calls, module_functions, dagger_schema)


# -- a run on the result ------------------------------------------------------------


@pytest.mark.engine
def test_ci_passes_after_init(
    engine: Any, bare_project: Path, run_cli: RunCli
) -> None:
    init(run_cli, bare_project)

    result = run_cli("ci", str(bare_project), "--json")

    assert result.returncode == 0, result.output
    for step in ("lint", "test", "build", "scan"):
        assert result.step(step)["status"] == "passed", step


@pytest.mark.parametrize("table", ["", "tool.pipeline."])
def test_environment_example_valid_when_uncommented(
    project_factory: ProjectFactory, table: str
) -> None:
    from pipeline.config import load_settings

    text = scaffold.render("config.toml", table=table)
    uncommented = "\n".join(
        line[2:] if line.startswith("# [") or line.startswith("# registry") or line.startswith(
            ("# target", "# url", "# release_tags", "# approval")
        ) else line
        for line in text.splitlines()
    )
    name = "pipeline.toml" if not table else "pyproject.toml"
    root = project_factory({name: uncommented, "requirements.txt": ""})

    environments = load_settings(root).settings.environments

    assert set(environments) == {"staging", "prod"}
    assert environments["prod"].approval is True
    assert environments["staging"].release_tags == ["v*"]
