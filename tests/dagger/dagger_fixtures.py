"""Fixtures for the Dagger tests: the engine's API schema, a stand-in
session that records the queries dagger-io sends, and a sample project.

Test modules load this file with ``pytest_plugins``. A conftest.py here would
replace the ``conftest`` module that the other test modules import from.

No Dagger engine runs here. The schema file is data from the Dagger
repository (docs/docs-graphql/schema.graphqls at tag v0.21.8). Its path comes
from PIPELINE_DAGGER_SCHEMA, else ../shared/dagger/ next to the repository.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import graphql
import pytest
from dagger.client._session import SharedConnection
from dagger_standin import Call, ScriptedEngine, StandInSession, client_for

from pipeline.backends.dagger import DaggerBackend, Inputs
from pipeline.project import Project
from pipeline.run import Prepared, prepare
from pipeline.steps import build as build_step
from pipeline.steps._context import project_cache

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_ENV = "PIPELINE_DAGGER_SCHEMA"
DEFAULT_SCHEMA = REPO_ROOT.parent / "shared" / "dagger" / "schema-v0.21.8.graphqls"
# Where this project's development machines keep shared test data, for
# clones made outside /work.
FALLBACK_SCHEMA = Path("/work/shared/dagger/schema-v0.21.8.graphqls")
MODULE_SOURCE = REPO_ROOT / "ci" / "src"
GOLDEN_DIR = Path(__file__).parent / "golden"
GOLDEN_ENV = "PIPELINE_UPDATE_GOLDEN"
FIXED_TIME = "2026-01-01T00:00:00+00:00"

SAMPLE_FILES = {
    "pyproject.toml": '[project]\nname = "sample-service"\nversion = "1.0.0"\n',
    "requirements.txt": "requests==2.32.3\n",
    "sample_service/__init__.py": "VERSION = '1.0.0'\n",
    "tests/test_version.py": "def test_version():\n    assert True\n",
    "Dockerfile": "FROM python:3.11-slim\nCOPY . /app\nUSER 1000\n",
    ".gitignore": "build/\n*.log\n/dist\ndocs/_build/\n!keep.log\n",
    ".trivyignore": "CVE-2020-14343\n",
    "ca.pem": "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n",
    "pipeline.toml": (
        'ca_bundle = "ca.pem"\n'
        "[build]\n"
        'target = "runtime"\n'
        'build_args = { PYTHON_VERSION = "3.11" }\n'
        "[scan]\n"
        'db_repository = "mirror.example.test/trivy-db:2"\n'
    ),
}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def schema_path() -> Path:
    """The Dagger v0.21.8 API schema. Tests skip without it, unless CI=true."""
    path = Path(os.environ.get(SCHEMA_ENV) or DEFAULT_SCHEMA)
    if not os.environ.get(SCHEMA_ENV) and not path.is_file() and FALLBACK_SCHEMA.is_file():
        path = FALLBACK_SCHEMA
    if not path.is_file():
        reason = (
            f"Dagger API schema not found at {path}: set {SCHEMA_ENV} to a copy "
            "of schema-v0.21.8.graphqls to validate the Dagger queries"
        )
        if in_ci():
            pytest.fail(f"{reason} (CI=true: the schema check may not be skipped)")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def dagger_schema(schema_path: Path) -> graphql.GraphQLSchema:
    return graphql.build_schema(schema_path.read_text())


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the developer's settings and Dagger session out of the tests."""
    for name in list(os.environ):
        if name.startswith("PIPELINE_") and name not in (SCHEMA_ENV, GOLDEN_ENV):
            monkeypatch.delenv(name)
    for name in (
        "DAGGER_SESSION_PORT",
        "DAGGER_SESSION_TOKEN",
        "_EXPERIMENTAL_DAGGER_CLI_BIN",
    ):
        monkeypatch.delenv(name, raising=False)
    user_config = tmp_path / "empty-user-config.toml"
    user_config.write_text("")
    monkeypatch.setenv("PIPELINE_USER_CONFIG", str(user_config))


@pytest.fixture
def sample_project(
    project_factory: Callable[..., Path],
    isolated_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """A project whose step descriptions use every kind of mount."""
    monkeypatch.setattr(build_step, "_now", lambda: FIXED_TIME)
    return project_factory(SAMPLE_FILES, name="sample-service")


@pytest.fixture
def prepared(sample_project: Path) -> Prepared:
    return prepare(sample_project, engine="dagger")


@pytest.fixture
def scripted_engine() -> ScriptedEngine:
    return ScriptedEngine()


@pytest.fixture
def dagger_session(
    dagger_schema: graphql.GraphQLSchema,
    sample_project: Path,
    scripted_engine: ScriptedEngine,
) -> StandInSession:
    # The project's cache is keyed by the project's path, which differs
    # from one test run to the next.
    cache_key = project_cache(Project(sample_project)).key
    return StandInSession(
        dagger_schema,
        responder=scripted_engine,
        replacements={str(sample_project): "<project>", cache_key: "project-<project>"},
    )


@pytest.fixture
def dagger_backend(
    dagger_session: StandInSession, prepared: Prepared
) -> Iterator[DaggerBackend]:
    yield DaggerBackend(Inputs(client_for(dagger_session), prepared.redactor))


@pytest.fixture
def golden() -> Callable[[str, str], None]:
    """Compare text with golden/NAME, or rewrite it with PIPELINE_UPDATE_GOLDEN=1."""

    def check(name: str, text: str) -> None:
        path = GOLDEN_DIR / name
        if os.environ.get(GOLDEN_ENV) == "1":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            return
        assert path.is_file(), f"golden file {path} is missing; run with {GOLDEN_ENV}=1"
        assert text == path.read_text(), (
            f"the queries differ from {path}; review the change and rerun with "
            f"{GOLDEN_ENV}=1 to accept it"
        )

    return check


# -- the module's registration ------------------------------------------------


@pytest.fixture
def module_class(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The module's main class, with the main object name the engine sets."""
    monkeypatch.syspath_prepend(str(MODULE_SOURCE))
    from ci.main import Ci
    from dagger.mod._converter import to_typedef

    # dagger-io caches the TypeDef objects of annotations, and a list's
    # element TypeDef keeps the ID of the session that first sent it.
    to_typedef.cache_clear()

    module = Ci.__dagger_module__
    monkeypatch.setattr(module, "_main_name", "Ci")
    monkeypatch.setattr(module, "_main", Ci.__dagger_object_type__)
    return Ci


@pytest.fixture
def global_session(
    dagger_schema: graphql.GraphQLSchema,
    scripted_engine: ScriptedEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[StandInSession]:
    """A stand-in behind dagger-io's global ``dag``, which module code uses."""
    session = StandInSession(dagger_schema, responder=scripted_engine)
    monkeypatch.setattr(SharedConnection(), "_session", session)
    yield session


def nested(call: Call, name: str) -> list[Call]:
    value = call.args[name]
    assert isinstance(value, list), f"{call.field}.{name} holds no object"
    return value


def type_of(calls: list[Call]) -> tuple[str, str | None, bool]:
    """Return (kind, object or element name, optional) of a TypeDef chain."""
    kind, name, optional = "", None, False
    for call in calls:
        if call.field == "withKind":
            kind = call.args["kind"]
        elif call.field == "withObject":
            kind, name = "OBJECT_KIND", call.args["name"]
        elif call.field == "withListOf":
            # A list is named after its elements' type, as in [Secret].
            element = type_of(call.args["elementType"])
            kind, name = "LIST_KIND", element[1] or element[0]
        elif call.field == "withOptional":
            optional = call.args["optional"]
    return kind, name, optional


def describe_function(calls: list[Call]) -> dict[str, Any]:
    """Collect a Function chain into name, description, cache policy and args."""
    [root] = [call for call in calls if call.field == "function"]
    function: dict[str, Any] = {
        "name": root.args["name"],
        "returns": type_of(nested(root, "returnType"))[:2],
        "description": None,
        "cache": None,
        "args": {},
    }
    for call in calls:
        if call.field == "withDescription":
            function["description"] = call.args["description"]
        elif call.field == "withCachePolicy":
            function["cache"] = call.args["policy"]
        elif call.field == "withArg":
            function["args"][call.args["name"]] = {
                "type": type_of(nested(call, "typeDef")),
                "description": call.args.get("description"),
                "default_path": call.args.get("defaultPath"),
                "ignore": call.args.get("ignore"),
                "default_value": call.args.get("defaultValue"),
            }
    return function


async def read_registration(
    module_class: Any, session: StandInSession
) -> dict[str, dict[str, Any]]:
    """Register the module as the engine requests it and describe its functions.

    The constructor is listed under the name "".
    """
    module_id = await module_class.__dagger_module__._typedefs()
    final = session.requests[-1]
    assert final.returned_id == module_id
    [with_object] = [call for call in final.calls if call.field == "withObject"]
    object_calls = nested(with_object, "object")
    functions = {}
    for call in object_calls:
        if call.field in ("withFunction", "withConstructor"):
            described = describe_function(nested(call, "function"))
            functions[described["name"]] = described
    return functions


@pytest.fixture
def module_functions(
    module_class: Any, global_session: StandInSession
) -> dict[str, dict[str, Any]]:
    """The module's functions as registered, by name ("" is the constructor)."""
    return anyio.run(read_registration, module_class, global_session)


# -- invoking the module's functions --------------------------------------------


async def source_id(session: StandInSession, path: Path) -> str:
    """Return the ID of a host directory, as the CLI passes --source."""
    from dagger import dag

    return await dag.host().directory(str(path)).id()


async def call_function(
    module_class: Any, name: str, source: str, args: dict[str, Any] | None = None
) -> Any:
    """Invoke a function through the SDK entry that the engine calls.

    Object arguments are passed as IDs, as the engine passes them.
    """
    module = module_class.__dagger_module__
    parent, _ = await module.get_structured_result("Ci", {}, "", {"source": source})
    state = await module.unstructure(parent, module_class)
    result, _ = await module.get_structured_result("Ci", state, name, args or {})
    return result


@pytest.fixture
def module_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the module's functions create their work folders."""
    folder = tmp_path / "module-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder
