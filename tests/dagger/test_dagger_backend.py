"""How the Dagger backend handles failures, excludes and unusual specs, and
how the engine is chosen and reached, all without an engine."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest
from dagger_standin import ExecFailure, ScriptedEngine, StandInSession, find_calls

from conftest import PIPELINE
from pipeline.backends import choose_engine, find_dagger, open_backend
from pipeline.backends.dagger import DaggerBackend, connect, dagger_excludes
from pipeline.errors import EXIT_NO_ENGINE, ConfigError, NoEngineError, StepFailed
from pipeline.results import Status
from pipeline.run import Prepared
from pipeline.secrets import Redactor
from pipeline.spec import BuildSpec, StepSpec
from pipeline.steps import build as build_step

pytest_plugins = ["dagger_fixtures"]

REPO_ROOT = Path(__file__).resolve().parents[2]


def noop(text: str) -> None:
    return None


def simple_spec(**changes: object) -> StepSpec:
    fields: dict[str, object] = {
        "name": "probe",
        "image": "python:3.11-slim",
        "setup": (("mkdir", "-p", "/reports"), ("pip", "install", "flake8")),
        "commands": (("flake8", "."), ("pytest",)),
    }
    fields.update(changes)
    return StepSpec(**fields)  # type: ignore[arg-type]


# -- excludes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("gitignore", "dagger"),
    [
        (".git/", "**/.git"),
        ("*.pyc", "**/*.pyc"),
        ("__pycache__/", "**/__pycache__"),
        ("/dist", "dist"),
        ("/build/", "build"),
        ("docs/_build/", "docs/_build"),
        ("docs/*.html", "docs/*.html"),
        ("**/generated", "**/generated"),
        ("!keep.log", "!**/keep.log"),
        ("!/top.log", "!top.log"),
    ],
)
def test_excludes_match_gitignore_depth(gitignore: str, dagger: str) -> None:
    assert dagger_excludes([gitignore]) == [dagger]


def test_excludes_drop_empty_patterns() -> None:
    assert dagger_excludes(["/", "!", ".venv/"]) == ["**/.venv"]


# -- step failures ----------------------------------------------------------


@pytest.mark.anyio
async def test_failed_setup_stops_step(
    dagger_backend: DaggerBackend, scripted_engine: ScriptedEngine, tmp_path: Path
) -> None:
    scripted_engine.failing_setup = "pip install flake8"
    output: list[str] = []

    result = await dagger_backend.run(simple_spec(), tmp_path, output.append)

    assert result.results == ()
    assert result.setup_failed is not None
    assert result.setup_failed.command == ("pip", "install", "flake8")
    assert result.setup_failed.exit_code == 1
    assert "setup failed on purpose" in result.setup_failed.stderr
    assert output == [result.setup_failed.output]


@pytest.mark.anyio
async def test_failing_commands_all_run(
    dagger_backend: DaggerBackend, scripted_engine: ScriptedEngine, tmp_path: Path
) -> None:
    scripted_engine.exit_codes["flake8"] = 1
    scripted_engine.stdout["flake8"] = "app.py:1:1: F401 unused\n"
    scripted_engine.exit_codes["pytest"] = 2

    result = await dagger_backend.run(simple_spec(), tmp_path, noop)

    assert [r.exit_code for r in result.results] == [1, 2]
    assert result.results[0].stdout == "app.py:1:1: F401 unused\n"


@pytest.mark.anyio
async def test_killed_command_reported(
    dagger_session: StandInSession, dagger_backend: DaggerBackend, tmp_path: Path
) -> None:
    def kill_pytest(calls: list) -> object:
        if calls[-1].field == "exitCode" and find_calls(calls, "withExec")[-1].args[
            "args"
        ] == ["pytest"]:
            raise ExecFailure(["pytest"], 137, "", "Killed")
        return None

    dagger_session.responder = kill_pytest

    result = await dagger_backend.run(simple_spec(), tmp_path, noop)

    assert [r.exit_code for r in result.results] == [0, 137]
    assert result.results[1].stderr == "Killed"


@pytest.mark.anyio
async def test_command_after_killed_runs(
    dagger_session: StandInSession, dagger_backend: DaggerBackend, tmp_path: Path
) -> None:
    def kill_flake8(calls: list) -> object:
        commands = [call.args["args"] for call in find_calls(calls, "withExec")]
        if calls[-1].field == "exitCode" and ["flake8", "."] in commands:
            raise ExecFailure(["flake8", "."], 137, "", "Killed")
        return None

    dagger_session.responder = kill_flake8

    result = await dagger_backend.run(simple_spec(), tmp_path, noop)

    assert [r.command for r in result.results] == [("flake8", "."), ("pytest",)]
    assert [r.exit_code for r in result.results] == [137, 0]


@pytest.mark.anyio
async def test_output_redacted(
    dagger_backend: DaggerBackend, scripted_engine: ScriptedEngine, tmp_path: Path
) -> None:
    dagger_backend.inputs.redactor.add("s3cr3t-value")
    scripted_engine.stdout["flake8"] = "token is s3cr3t-value\n"

    result = await dagger_backend.run(simple_spec(), tmp_path, noop)

    assert result.results[0].stdout == "token is ***\n"


@pytest.mark.anyio
async def test_unreachable_image_fails_step(
    dagger_session: StandInSession, dagger_backend: DaggerBackend, tmp_path: Path
) -> None:
    from gql.transport.exceptions import TransportQueryError

    def refuse_pull(calls: list) -> object:
        if calls[-1].field == "sync":
            raise TransportQueryError(
                "pull denied", errors=[{"message": "pull access denied"}]
            )
        return None

    dagger_session.responder = refuse_pull

    with pytest.raises(StepFailed, match="pull access denied"):
        await dagger_backend.run(simple_spec(), tmp_path, noop)


@pytest.mark.anyio
async def test_host_network_rejected(
    dagger_backend: DaggerBackend, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="host's network"):
        await dagger_backend.run(simple_spec(host_network=True), tmp_path, noop)


@pytest.mark.anyio
async def test_missing_outputs_skipped(
    dagger_backend: DaggerBackend, scripted_engine: ScriptedEngine, tmp_path: Path
) -> None:
    scripted_engine.files["/reports/present.txt"] = "report"
    spec = simple_spec(outputs=("/reports/present.txt", "/reports/absent.txt"))

    result = await dagger_backend.run(spec, tmp_path / "reports", noop)

    assert result.outputs == {
        "/reports/present.txt": tmp_path / "reports" / "present.txt"
    }
    assert (tmp_path / "reports" / "present.txt").read_text() == "report"


# -- builds -----------------------------------------------------------------


@pytest.mark.anyio
async def test_failed_build_names_error(
    dagger_session: StandInSession, dagger_backend: DaggerBackend, prepared: Prepared
) -> None:
    def fail_build(calls: list) -> object:
        if calls[-1].field == "sync":
            raise ExecFailure(
                ["/bin/sh", "-c", "pip install nope"], 1, "", "No matching distribution"
            )
        return None

    dagger_session.responder = fail_build

    result = await build_step.run(prepared.context, dagger_backend, noop)

    assert result.status is Status.FAILED
    assert "did not complete successfully" in result.summary
    assert "No matching distribution" in result.output
    assert dagger_backend.images == {}


@pytest.mark.anyio
async def test_dockerfile_outside_context(
    dagger_session: StandInSession, dagger_backend: DaggerBackend, tmp_path: Path
) -> None:
    context = tmp_path / "context"
    context.mkdir()
    dockerfile = tmp_path / "docker" / "app.Dockerfile"
    spec = BuildSpec(
        name="build", context=context, dockerfile=dockerfile, tags=("app:1",)
    )

    output = await dagger_backend.build(spec, noop)

    assert output.exit_code == 0
    assert dagger_session.validation_errors() == []
    request = next(
        r for r in dagger_session.requests if find_calls(r.calls, "dockerBuild")
    )
    [with_file] = find_calls(request.calls, "withFile")
    assert with_file.args["path"] == ".pipeline.Dockerfile"
    [docker_build] = find_calls(request.calls, "dockerBuild")
    assert docker_build.args["dockerfile"] == ".pipeline.Dockerfile"


# -- choosing and reaching an engine ----------------------------------------


@pytest.fixture
def no_dagger(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An environment without a Dagger session or CLI; returns an empty PATH dir."""
    for name in (
        "DAGGER_SESSION_PORT",
        "DAGGER_SESSION_TOKEN",
        "_EXPERIMENTAL_DAGGER_CLI_BIN",
    ):
        monkeypatch.delenv(name, raising=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


def fake_dagger_cli(bin_dir: Path) -> Path:
    """A `dagger` CLI whose engine cannot start, as on a machine without one."""
    cli = bin_dir / "dagger"
    cli.write_text("#!/bin/sh\necho 'failed to pull the engine image' >&2\nexit 1\n")
    cli.chmod(cli.stat().st_mode | stat.S_IXUSR)
    return cli


def test_auto_picks_docker_without_dagger(no_dagger: Path) -> None:
    choice = choose_engine("auto")

    assert choice.name == "docker"
    assert "DAGGER_SESSION_PORT is not set" in choice.reason


def test_auto_picks_dagger_cli(no_dagger: Path) -> None:
    cli = fake_dagger_cli(no_dagger)

    choice = choose_engine("auto")

    assert choice.name == "dagger"
    assert str(cli) in choice.reason


def test_auto_picks_dagger_session(
    no_dagger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGGER_SESSION_PORT", "41234")

    choice = choose_engine("auto")

    assert choice.name == "dagger"
    assert "41234" in choice.reason


def test_requested_engine_kept(no_dagger: Path) -> None:
    assert choose_engine("dagger").name == "dagger"
    assert choose_engine("docker").name == "docker"


@pytest.mark.anyio
async def test_dagger_without_engine_raises(no_dagger: Path) -> None:
    with pytest.raises(NoEngineError) as error:
        await connect("run1", Redactor())

    assert "DAGGER_SESSION_PORT is not set" in error.value.message
    assert "no dagger CLI is on PATH" in error.value.message
    assert error.value.exit_code == EXIT_NO_ENGINE


@pytest.mark.anyio
async def test_failing_cli_raises_no_engine(no_dagger: Path) -> None:
    cli = fake_dagger_cli(no_dagger)

    with pytest.raises(NoEngineError) as error:
        await connect("run1", Redactor())

    # dagger-io includes the CLI's stderr only when the CLI has exited by the
    # time it reads the connection parameters, so the message may lack it.
    assert str(cli) in error.value.message
    assert "_EXPERIMENTAL_DAGGER_CLI_BIN" not in os.environ


@pytest.mark.anyio
async def test_closed_session_raises_no_engine(
    no_dagger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("DAGGER_SESSION_PORT", str(port))
    monkeypatch.setenv("DAGGER_SESSION_TOKEN", "test-token")

    with pytest.raises(NoEngineError) as error:
        await open_backend("dagger", "run1", Redactor(), None)  # type: ignore[arg-type]

    assert f"port {port}" in error.value.message
    assert error.value.hint is not None
    assert "DAGGER_SESSION_PORT" in error.value.hint


def test_find_dagger_reads_cli_variable(
    no_dagger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("_EXPERIMENTAL_DAGGER_CLI_BIN", "/opt/dagger/bin/dagger")

    endpoint = find_dagger()

    assert endpoint is not None
    assert endpoint.cli == "/opt/dagger/bin/dagger"


def test_cli_engine_dagger_exits_69(sample_project: Path, no_dagger: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PIPELINE_")
    }
    env["PIPELINE_USER_CONFIG"] = os.environ["PIPELINE_USER_CONFIG"]

    completed = subprocess.run(
        [str(PIPELINE), "lint", "--engine", "dagger", str(sample_project)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )

    message = " ".join(completed.stderr.split())  # undo the console's line wrapping
    assert completed.returncode == EXIT_NO_ENGINE, completed.stderr
    assert "engine: dagger (requested)" in message
    assert "no Dagger engine" in message
    assert "no dagger CLI is on PATH" in message


def test_cli_engine_from_variable(sample_project: Path, no_dagger: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PIPELINE_")
    }
    env["PIPELINE_USER_CONFIG"] = os.environ["PIPELINE_USER_CONFIG"]
    env["PIPELINE_ENGINE"] = "dagger"

    completed = subprocess.run(
        [str(PIPELINE), "test", str(sample_project)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )

    assert completed.returncode == EXIT_NO_ENGINE, completed.stderr
    assert "engine: dagger (requested)" in completed.stderr


def test_cli_help_lists_engines() -> None:
    completed = subprocess.run(
        [str(PIPELINE), "ci", "--help"], capture_output=True, text=True, timeout=120
    )

    assert "--engine [docker|dagger|auto]" in completed.stdout
