"""The Dagger module in ci/: its files, its registration and its functions.

Registration is produced as the engine would ask for it, through the
module's ``__dagger_module__`` and a stand-in session in place of dagger-io's
shared connection. Functions are invoked through the same SDK entry that the
engine calls, with the source passed as a Directory ID.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dagger.mod._exceptions import FunctionError
from dagger_fixtures import call_function, read_registration, source_id
from dagger_standin import Call, CopyingEngine, ScriptedEngine, StandInSession, find_calls

from pipeline.steps import lint as lint_step

pytest_plugins = ["dagger_fixtures"]
pytestmark = pytest.mark.anyio

REPO_ROOT = Path(__file__).resolve().parents[2]
Golden = Callable[[str, str], None]

FUNCTIONS = {
    "lint": ("STRING_KIND", None),
    "test": ("STRING_KIND", None),
    "reports": ("OBJECT_KIND", "Directory"),
    "build": ("OBJECT_KIND", "Container"),
    "scan": ("OBJECT_KIND", "File"),
    "ci": ("STRING_KIND", None),
    "publish": ("STRING_KIND", None),
    "release": ("STRING_KIND", None),
}
NEVER_CACHED = {"publish", "release"}
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


# -- files ------------------------------------------------------------------


def test_dagger_json_names_module() -> None:
    config = json.loads((REPO_ROOT / "dagger.json").read_text())

    assert config["name"] == "ci"
    assert config["engineVersion"] == "v0.21.8"
    assert config["sdk"] == {"source": "python"}
    assert config["source"] == "ci"
    for path in ("pyproject.toml", "README.md", "pipeline/**"):
        assert path in config["include"]


def test_module_project_installs_library() -> None:
    project = tomllib.loads((REPO_ROOT / "ci" / "pyproject.toml").read_text())
    library = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())

    assert project["project"]["dependencies"] == ["dagger-io", "rgbridge-pipeline"]
    sources = project["tool"]["uv"]["sources"]
    assert sources["rgbridge-pipeline"] == {"path": "..", "editable": True}
    assert sources["dagger-io"] == {"path": "sdk", "editable": True}
    assert project["tool"]["uv"]["override-dependencies"] == ["dagger-io"]
    entry = project["project"]["entry-points"]["dagger.mod"]["main_object"]
    assert entry == "ci.main:Ci"
    assert (
        project["project"]["requires-python"] == library["project"]["requires-python"]
    )
    assert "dagger-io==0.21.8" in library["project"]["dependencies"]


def test_module_lock_uses_local_packages() -> None:
    lock = tomllib.loads((REPO_ROOT / "ci" / "uv.lock").read_text())
    packages = {package["name"]: package for package in lock["package"]}

    assert packages["dagger-io"]["source"] == {"editable": "sdk"}
    assert packages["rgbridge-pipeline"]["source"] == {"editable": "../"}
    assert lock["manifest"]["overrides"] == [{"name": "dagger-io", "editable": "sdk"}]


def test_module_gitignore_covers_generated_files() -> None:
    lines = (REPO_ROOT / "ci" / ".gitignore").read_text().splitlines()

    assert "/sdk" in lines
    assert "/.venv" in lines


# -- registration -----------------------------------------------------------


@pytest.fixture
async def registration(
    module_class: Any, global_session: StandInSession
) -> tuple[dict[str, Any], StandInSession]:
    return await read_registration(module_class, global_session), global_session


async def test_registration_queries_valid(registration: Any, golden: Golden) -> None:
    _, session = registration

    assert session.validation_errors() == []
    golden("module.graphql", session.transcript())


async def test_registration_lists_functions(registration: Any) -> None:
    functions, _ = registration

    assert set(functions) == set(FUNCTIONS) | {""}
    for name, returns in FUNCTIONS.items():
        assert functions[name]["returns"] == returns, name


async def test_functions_have_one_line_help(registration: Any) -> None:
    functions, _ = registration

    for name in FUNCTIONS:
        description = functions[name]["description"]
        assert description, f"{name} has no description"
        assert "\n" not in description, name


async def test_push_functions_never_cached(registration: Any) -> None:
    functions, _ = registration

    for name in FUNCTIONS:
        expected = "Never" if name in NEVER_CACHED else None
        assert functions[name]["cache"] == expected, name


async def test_constructor_source_argument(registration: Any) -> None:
    functions, _ = registration
    args = functions[""]["args"]

    assert list(args) == ["source", "config"]
    source = args["source"]
    assert source["type"] == ("OBJECT_KIND", "Directory", False)
    assert source["default_path"] == "/"
    assert source["ignore"] == SOURCE_IGNORE
    assert source["default_value"] is None
    assert args["config"]["type"] == ("OBJECT_KIND", "File", True)


async def test_function_arguments(registration: Any) -> None:
    functions, _ = registration

    assert functions["scan"]["args"]["image"]["type"] == (
        "OBJECT_KIND",
        "Container",
        True,
    )
    for name in ("lint", "test", "reports", "build", "ci"):
        assert functions[name]["args"] == {}, name
    for name in NEVER_CACHED:
        password = functions[name]["args"]["password"]
        assert password["type"] == ("OBJECT_KIND", "Secret", True)
    for name, function in functions.items():
        for arg, spec in function["args"].items():
            assert spec["description"], f"{name or 'constructor'}: {arg} has no help"


STRING = ("STRING_KIND", None, False)
PUBLISH_ARGS = {
    "commit": STRING,
    "environment": STRING,
    "address": STRING,
    "tag": STRING,
    "username": STRING,
    "password": ("OBJECT_KIND", "Secret", True),
    "actor": STRING,
}
RELEASE_ARGS = {
    "tag": STRING,
    "commit": STRING,
    "tool_source": ("OBJECT_KIND", "Directory", False),
    "username": STRING,
    "password": ("OBJECT_KIND", "Secret", True),
    "secrets": ("LIST_KIND", "Secret", True),
    "docker_socket": ("OBJECT_KIND", "Socket", True),
    "kubeconfig": ("OBJECT_KIND", "Secret", True),
    "approved_by": STRING,
    "actor": STRING,
}


async def test_publish_arguments(registration: Any) -> None:
    functions, _ = registration
    args = functions["publish"]["args"]

    assert {name: spec["type"] for name, spec in args.items()} == PUBLISH_ARGS
    assert list(args) == list(PUBLISH_ARGS)
    assert args["commit"]["default_value"] is None
    for name in ("environment", "address", "tag", "username", "actor"):
        assert args[name]["default_value"] == '""', name


async def test_release_arguments(registration: Any) -> None:
    functions, _ = registration
    args = functions["release"]["args"]

    assert {name: spec["type"] for name, spec in args.items()} == RELEASE_ARGS
    assert list(args) == list(RELEASE_ARGS)
    assert args["tag"]["default_value"] is None
    assert args["commit"]["default_value"] is None
    for name in ("username", "approved_by", "actor"):
        assert args[name]["default_value"] == '""', name


async def test_release_tool_source_default(registration: Any) -> None:
    functions, _ = registration
    tool_source = functions["release"]["args"]["tool_source"]

    assert tool_source["default_path"] == "/"
    assert tool_source["ignore"] == [
        "*",
        "!Dockerfile",
        "!pyproject.toml",
        "!README.md",
        "!pipeline",
        "**/__pycache__",
    ]


# -- invocation -------------------------------------------------------------


@pytest.fixture
def copying_engine() -> CopyingEngine:
    return CopyingEngine()


@pytest.fixture
def scripted_engine(copying_engine: CopyingEngine) -> ScriptedEngine:
    return copying_engine


async def test_lint_uses_passed_source(
    module_class: Any,
    global_session: StandInSession,
    sample_project: Path,
    copying_engine: CopyingEngine,
    module_tmp: Path,
) -> None:
    copying_engine.files[lint_step.REPORT] = ""
    source = await source_id(global_session, sample_project)

    summary = await call_function(module_class, "lint", source)

    assert "lint" in summary
    assert "passed" in summary
    assert global_session.validation_errors() == []
    exported = [r for r in global_session.requests if r.leaf.field == "export"]
    assert exported[0].calls[:2] == [
        Call("Query", "host", {}),
        Call("Host", "directory", {"path": str(sample_project)}),
    ]
    [run_folder] = module_tmp.iterdir()
    assert (run_folder / "sample-service" / "pyproject.toml").is_file()


async def test_lint_mounts_module_source(
    module_class: Any,
    global_session: StandInSession,
    sample_project: Path,
    copying_engine: CopyingEngine,
    module_tmp: Path,
) -> None:
    copying_engine.files[lint_step.REPORT] = ""
    source = await source_id(global_session, sample_project)

    await call_function(module_class, "lint", source)

    syncs = [r for r in global_session.requests if r.leaf.field == "sync"]
    [with_directory] = find_calls(syncs[0].calls, "withDirectory")
    mounted = with_directory.args["source"]
    assert mounted[:2] == [
        Call("Query", "host", {}),
        Call("Host", "directory", {"path": str(sample_project)}),
    ]
    assert mounted[-1].field == "filter"
    assert "**/.git" in mounted[-1].args["exclude"]


async def test_lint_failure_raises_findings(
    module_class: Any,
    global_session: StandInSession,
    sample_project: Path,
    copying_engine: CopyingEngine,
    module_tmp: Path,
) -> None:
    finding = "./app.py:3:1: F401 'os' imported but unused\n"
    copying_engine.files[lint_step.REPORT] = finding
    copying_engine.stdout["flake8"] = finding
    copying_engine.exit_codes["flake8"] = 1
    source = await source_id(global_session, sample_project)

    with pytest.raises(FunctionError) as failure:
        await call_function(module_class, "lint", source)

    message = str(failure.value)
    assert "failed: lint" in message
    assert "app.py:3:1: F401" in message
