"""This repository's CI wrappers: what their jobs run, and real validators.

Every `pipeline` command and option in the YAML must exist in the real
command's --help. Every `dagger call` must match the Dagger module's
registered functions, which are produced offline as in tests/dagger. Calls
chained after a function, such as `reports export --path=DIR`, must match
the engine's API schema.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import graphql
import pytest

from conftest import REPO_ROOT
from pipeline.reports import markdown
from wrapper_checks import (
    GITLAB_REPORTS,
    RELEASE_STAGES,
    REPORTS,
    STAGES,
    Script,
    check_actionlint,
    check_dagger_commands,
    check_github_workflow,
    check_deploy_workflow,
    check_gitlab_ci,
    check_gitlab_release,
    check_jsonschema,
    check_only_pipeline_or_dagger,
    check_pipeline_commands,
    commands,
    dagger_problems,
    github_scripts,
    load_yaml,
    pipeline_problems,
    setup_problem,
)

# The Dagger fixtures live beside the Dagger tests, which import them by name.
if str(REPO_ROOT / "tests" / "dagger") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "tests" / "dagger"))
pytest_plugins = ["dagger_fixtures"]

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "ci.yml"
DEPLOY_WORKFLOW = REPO_ROOT / ".github" / "workflows" / "deploy.yml"
GITLAB_CI = REPO_ROOT / ".gitlab-ci.yml"


# -- this repository's wrappers ---------------------------------------------------


@pytest.mark.parametrize("workflow", [WORKFLOW, DEPLOY_WORKFLOW], ids=["ci", "deploy"])
def test_github_workflow_schema(workflow: Path) -> None:
    result = check_jsonschema(workflow, "vendor.github-workflows")

    assert result.returncode == 0, result.stdout + result.stderr


def test_gitlab_ci_schema() -> None:
    result = check_jsonschema(GITLAB_CI, "vendor.gitlab-ci")

    assert result.returncode == 0, result.stdout + result.stderr


def test_gitlab_schema_rejects_invalid(tmp_path: Path) -> None:
    invalid = tmp_path / ".gitlab-ci.yml"
    invalid.write_text(GITLAB_CI.read_text().replace("codequality:", "code_quality:"))

    result = check_jsonschema(invalid, "vendor.gitlab-ci")

    assert result.returncode == 1, result.stdout
    assert "'code_quality' was unexpected" in result.stdout


@pytest.mark.parametrize("workflow", [WORKFLOW, DEPLOY_WORKFLOW], ids=["ci", "deploy"])
def test_github_workflow_actionlint(workflow: Path) -> None:
    check_actionlint(workflow)


def test_github_deploy_workflow_settings() -> None:
    check_deploy_workflow(DEPLOY_WORKFLOW)


def test_github_release_job() -> None:
    release = load_yaml(WORKFLOW)["jobs"]["release"]

    assert release["if"] == "startsWith(github.ref, 'refs/tags/v')"
    assert set(release["needs"]) == {"pipeline", "unit-tests"}
    assert release["environment"]["name"] == "staging"
    assert release["concurrency"]["cancel-in-progress"] is False


def test_gitlab_release_jobs() -> None:
    check_gitlab_release(GITLAB_CI)


def test_github_workflow_settings() -> None:
    check_github_workflow(WORKFLOW)


def test_github_workflow_runs_both_projects() -> None:
    workflow = load_yaml(WORKFLOW)
    matrix = workflow["jobs"]["pipeline"]["strategy"]["matrix"]["include"]

    assert [entry["project"] for entry in matrix] == [".", "examples/bridge-service"]


def test_github_summary_from_reports() -> None:
    runs = [script.text for script in github_scripts(load_yaml(WORKFLOW))]

    assert any(
        f"--path={markdown.FILE_NAME}" in run and "$GITHUB_STEP_SUMMARY" in run
        for run in runs
    )


def test_gitlab_ci_settings() -> None:
    check_gitlab_ci(GITLAB_CI, GITLAB_REPORTS, STAGES + RELEASE_STAGES)


def test_gitlab_ci_runs_both_projects() -> None:
    config = load_yaml(GITLAB_CI)
    matrix = config[".pipeline"]["parallel"]["matrix"]

    assert matrix == [{"PROJECT": [".", "examples/bridge-service"]}]
    assert config["variables"]["PIPELINE_REPORTS_DIR"] == f"$CI_PROJECT_DIR/{REPORTS}"


def test_jobs_only_call_pipeline() -> None:
    calls = check_only_pipeline_or_dagger(WORKFLOW, GITLAB_CI, DEPLOY_WORKFLOW)
    names = {command.words[0] for command in calls}

    assert names == {"pipeline", "dagger"}


def test_pipeline_commands_exist() -> None:
    calls = check_only_pipeline_or_dagger(WORKFLOW, GITLAB_CI, DEPLOY_WORKFLOW)
    used = {command.words[1] for command in calls if command.words[0] == "pipeline"}

    assert used == {"lint", "test", "build", "scan", "release", "promote", "rollback"}
    check_pipeline_commands(calls)


def test_dagger_calls_match_module(
    module_functions: dict[str, dict[str, Any]], dagger_schema: graphql.GraphQLSchema
) -> None:
    calls = check_only_pipeline_or_dagger(WORKFLOW, GITLAB_CI)
    dagger_calls = [command for command in calls if command.words[0] == "dagger"]

    assert dagger_calls
    check_dagger_commands(calls, module_functions, dagger_schema)


# -- the checks themselves --------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("pipeline lnt .", "`pipeline lnt --help` failed"),
        ("pipeline lint --engine podman .", "'podman' is not one of"),
        ("pipeline scan --image-name x .", "lists no --image-name"),
        ("pipeline ci . examples", "more than one PATH"),
    ],
    ids=["unknown-command", "bad-choice", "unknown-option", "two-paths"],
)
def test_pipeline_check_catches(line: str, problem: str) -> None:
    [command] = commands(Script("test", line))

    problems = pipeline_problems(command)

    assert any(problem in found for found in problems), problems


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("dagger call ci --source=.", "function ci has no argument --source"),
        ("dagger call --source=. lnt", "the module has no function lnt"),
        ("dagger call --source=. reports export", "Directory.export: --path is required"),
        ("dagger call --source=. reports exprt --path=x", "Directory has no function exprt"),
        ("dagger call --source=. scan --img=x", "function scan has no argument --img"),
        ("dagger run ci", "unexpected run before `call`"),
    ],
    ids=[
        "source-after-function",
        "unknown-function",
        "missing-required",
        "unknown-chained",
        "unknown-flag",
        "not-call",
    ],
)
def test_dagger_check_catches(
    line: str,
    problem: str,
    module_functions: dict[str, dict[str, Any]],
    dagger_schema: graphql.GraphQLSchema,
) -> None:
    [command] = commands(Script("test", line))

    problems = dagger_problems(command, module_functions, dagger_schema)

    assert any(problem in found for found in problems), problems


def test_setup_check_catches_step_logic() -> None:
    script = Script("test", "pip install . && cat summary.md >> \"$GITHUB_STEP_SUMMARY\"")
    found = commands(script)

    problems = [setup_problem(command, script) for command in found]

    assert problems[0] is None
    assert problems[1] is not None
    assert "only pipeline, dagger and setup commands" in problems[1]
