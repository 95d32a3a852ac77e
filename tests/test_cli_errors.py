"""Usage and configuration errors exit with 2 and name the problem; a missing
engine has its own exit code. None of these needs an engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ProjectFactory, RunCli

MINIMAL = {
    "requirements.txt": "",
    "app.py": "X = 1\n",
    "Dockerfile": "FROM python:3.11-slim\n",
}


def test_unknown_key(project_factory: ProjectFactory, run_cli: RunCli) -> None:
    root = project_factory({**MINIMAL, "pipeline.toml": "[scan]\nseverty = ['HIGH']\n"})

    result = run_cli("lint", str(root))

    assert result.returncode == 2
    assert "unknown key 'scan.severty'" in result.stderr
    assert "pipeline.toml" in result.stderr
    assert "severity" in result.stderr


def test_wrong_type(project_factory: ProjectFactory, run_cli: RunCli) -> None:
    pyproject = "[tool.pipeline.test]\nallow_no_tests = 'sometimes'\n"
    root = project_factory({**MINIMAL, "pyproject.toml": pyproject})

    result = run_cli("lint", str(root))

    assert result.returncode == 2
    assert "'test.allow_no_tests'" in result.stderr
    assert "'sometimes'" in result.stderr
    assert "pyproject.toml" in result.stderr


def test_bad_env_value(project_factory: ProjectFactory, run_cli: RunCli) -> None:
    root = project_factory(MINIMAL)

    result = run_cli("lint", str(root), env={"PIPELINE_SCAN__SEVERITY": "HIGH,SEVERE"})

    assert result.returncode == 2
    assert "PIPELINE_SCAN__SEVERITY" in result.stderr
    assert "SEVERE" in result.stderr


def test_invalid_toml(project_factory: ProjectFactory, run_cli: RunCli) -> None:
    root = project_factory({**MINIMAL, "pipeline.toml": "[scan\n"})

    result = run_cli("lint", str(root))

    assert result.returncode == 2
    assert "invalid TOML" in result.stderr


def test_missing_dockerfile(project_factory: ProjectFactory, run_cli: RunCli) -> None:
    root = project_factory({"requirements.txt": "", "app.py": "X = 1\n"})

    result = run_cli("ci", str(root))

    assert result.returncode == 2
    assert "Dockerfile not found" in result.stderr


def test_configured_dockerfile_missing(project_factory: ProjectFactory, run_cli: RunCli) -> None:
    root = project_factory({**MINIMAL, "pipeline.toml": "[build]\ndockerfile = 'docker/Dockerfile'\n"})

    result = run_cli("build", str(root))

    assert result.returncode == 2
    assert "build.dockerfile" in result.stderr


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"notes.txt": "hello\n"}, "not a Python project"),
        ({}, "not a Python project"),
    ],
    ids=["no-markers", "empty"],
)
def test_not_a_project(
    project_factory: ProjectFactory, run_cli: RunCli, files: dict[str, str], message: str
) -> None:
    root = project_factory(files)

    result = run_cli("ci", str(root))

    assert result.returncode == 2
    assert message in result.stderr
    assert str(root) in result.stderr.replace("\n", "")


def test_missing_path(tmp_path: Path, run_cli: RunCli) -> None:
    result = run_cli("ci", str(tmp_path / "absent"))

    assert result.returncode == 2
    assert "project path not found" in result.stderr


def test_no_engine(project_factory: ProjectFactory, run_cli: RunCli, tmp_path: Path) -> None:
    root = project_factory(MINIMAL)

    result = run_cli("lint", str(root), env={"DOCKER_HOST": f"unix://{tmp_path}/no.sock"})

    assert result.returncode == 69
    assert "no Docker Engine answers" in result.stderr
    assert "DOCKER_HOST" in result.stderr


def test_unknown_option(run_cli: RunCli) -> None:
    result = run_cli("ci", "--no-such-option")

    assert result.returncode == 2
    assert "No such option" in result.stderr


def test_version(run_cli: RunCli) -> None:
    result = run_cli("--version")

    assert result.returncode == 0
    assert "pipeline, version" in result.stdout


def test_env_json_error_named(project_factory: ProjectFactory, run_cli: RunCli) -> None:
    root = project_factory(MINIMAL)

    result = run_cli("lint", str(root), env={"PIPELINE_LINT__PATHS": "not json"})

    message = " ".join(result.stderr.split())  # undo the console's line wrapping
    assert result.returncode == 2
    assert "PIPELINE_LINT__PATHS='not json'" in message
    assert """PIPELINE_LINT__PATHS='["a", "b"]'""" in message
    assert "EnvSettingsSource" not in message


@pytest.mark.parametrize("value", ["", ",", "[]"], ids=["empty", "comma", "json"])
def test_empty_severity_rejected(
    project_factory: ProjectFactory, run_cli: RunCli, value: str
) -> None:
    root = project_factory(MINIMAL)

    result = run_cli("lint", str(root), env={"PIPELINE_SCAN__SEVERITY": value})

    assert result.returncode == 2
    assert "'scan.severity'" in result.stderr
    assert "PIPELINE_SCAN__SEVERITY" in result.stderr


@pytest.mark.parametrize(
    "setting",
    ["[build]\ndockerfile", "[scan]\nignorefile", "ca_bundle"],
    ids=["dockerfile", "ignorefile", "ca-bundle"],
)
def test_host_file_not_read(
    project_factory: ProjectFactory, run_cli: RunCli, tmp_path: Path, setting: str
) -> None:
    host_file = tmp_path / "host-secret.txt"
    host_file.write_text("TOP-SECRET-LINE\n")
    config = f"{setting} = '{host_file}'\n"
    root = project_factory({**MINIMAL, "pipeline.toml": config})

    result = run_cli("build", str(root))

    assert result.returncode == 2
    assert "invalid value for" in result.stderr
    assert "TOP-SECRET-LINE" not in result.output
    assert "Traceback" not in result.stderr


def test_uppercase_image_name(project_factory: ProjectFactory, run_cli: RunCli) -> None:
    root = project_factory({**MINIMAL, "pipeline.toml": "[build]\nimage_name = 'MyApp'\n"})

    result = run_cli("build", str(root))

    assert result.returncode == 2
    assert "'build.image_name'" in result.stderr
    assert "lowercase" in result.stderr


def test_named_user_config_missing(
    project_factory: ProjectFactory, run_cli: RunCli, tmp_path: Path
) -> None:
    root = project_factory(MINIMAL)

    result = run_cli(
        "lint", str(root), env={"PIPELINE_USER_CONFIG": str(tmp_path / "absent.toml")}
    )

    assert result.returncode == 2
    assert "user config not found" in result.stderr


def test_config_option_folder(
    project_factory: ProjectFactory, run_cli: RunCli, tmp_path: Path
) -> None:
    root = project_factory(MINIMAL)

    result = run_cli("lint", "--config", str(tmp_path), str(root))

    assert result.returncode == 2
    assert "is a folder" in result.stderr


def test_pipeline_toml_folder(project_factory: ProjectFactory, run_cli: RunCli) -> None:
    root = project_factory({**MINIMAL, "pipeline.toml/notes.txt": ""})

    result = run_cli("lint", str(root))

    assert result.returncode == 2
    assert "is a folder" in result.stderr


@pytest.mark.parametrize(
    ("pyproject", "fragment"),
    [
        ("[project]\nname = 'x'\ndependencies = 'requests'\n", "'project.dependencies'"),
        ("project = 'x'\n", "'project'"),
        ("tool = 'x'\n", "'tool'"),
    ],
    ids=["dependencies-string", "project-string", "tool-string"],
)
def test_invalid_pyproject(
    project_factory: ProjectFactory, run_cli: RunCli, pyproject: str, fragment: str
) -> None:
    root = project_factory({**MINIMAL, "pyproject.toml": pyproject})

    result = run_cli("test", str(root))

    assert result.returncode == 2
    assert fragment in result.stderr
    assert "pyproject.toml" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name", ["pyproject.toml", "pipeline.toml"])
def test_non_utf8_settings(project_factory: ProjectFactory, run_cli: RunCli, name: str) -> None:
    root = project_factory(MINIMAL)
    (root / name).write_bytes(b"[tool.pipeline]\nimage = 'caf\xe9'\n")

    result = run_cli("lint", str(root))

    assert result.returncode == 2
    assert "not valid UTF-8" in result.stderr
    assert "Traceback" not in result.stderr
