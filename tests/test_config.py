"""Settings: defaults, file layers, variables and the errors they give."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.config import (
    Settings,
    host_ca_bundle,
    load_settings,
    resolve_ca_bundle,
)
from pipeline.errors import ConfigError

from conftest import ProjectFactory

CERTIFICATE = (
    "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n"
)
PRIVATE_KEY = (
    "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49\n-----END PRIVATE KEY-----\n"
)


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("PIPELINE_"):
            monkeypatch.delenv(name)
    user_config = tmp_path / "empty-user-config.toml"
    user_config.write_text("")
    monkeypatch.setenv("PIPELINE_USER_CONFIG", str(user_config))


def config_error(root: Path, config: Path | None = None) -> str:
    """Load the settings, expecting ConfigError; return its message and hint."""
    with pytest.raises(ConfigError) as caught:
        load_settings(root, config)
    return f"{caught.value.message}\n{caught.value.hint or ''}"


def test_defaults_without_config(project_factory: ProjectFactory) -> None:
    settings = load_settings(project_factory({"requirements.txt": ""})).settings

    assert settings.image == "python:3.11-slim"
    assert settings.scan.severity == ["HIGH", "CRITICAL"]
    assert settings.scan.ignore_unfixed is False
    assert settings.scan.allow_missing_vuln_db is False
    assert settings.test.allow_no_tests is False
    assert settings.test.timeout == 3600
    assert settings.reports_dir == ".pipeline/reports"


def test_pyproject_table_read(project_factory: ProjectFactory) -> None:
    root = project_factory(
        {"pyproject.toml": "[tool.pipeline.scan]\nignore_unfixed = true\nseverity = ['CRITICAL']\n"}
    )

    settings = load_settings(root).settings

    assert settings.scan.ignore_unfixed is True
    assert settings.scan.severity == ["CRITICAL"]


def test_env_overrides_file(project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    root = project_factory({"pipeline.toml": "[scan]\nseverity = ['CRITICAL']\n"})
    monkeypatch.setenv("PIPELINE_SCAN__SEVERITY", "medium, high")
    monkeypatch.setenv("PIPELINE_TEST__ALLOW_NO_TESTS", "true")

    settings = load_settings(root).settings

    assert settings.scan.severity == ["MEDIUM", "HIGH"]
    assert settings.test.allow_no_tests is True


def test_user_config_layer(
    project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    user = tmp_path / "user.toml"
    user.write_text('docker_cli = "/opt/docker"\n[scan]\ndb_repository = "mirror:5000/db:2"\n')
    monkeypatch.setenv("PIPELINE_USER_CONFIG", str(user))
    root = project_factory({"pipeline.toml": "[scan]\ndb_repository = 'project:5000/db:2'\n"})

    settings = load_settings(root).settings

    assert settings.docker_cli == "/opt/docker"
    assert settings.scan.db_repository == "project:5000/db:2"


def test_both_files_rejected(project_factory: ProjectFactory) -> None:
    root = project_factory(
        {"pipeline.toml": "image = 'a'\n", "pyproject.toml": "[tool.pipeline]\nimage = 'b'\n"}
    )

    with pytest.raises(ConfigError, match="both"):
        load_settings(root)


def test_explicit_config_file(project_factory: ProjectFactory, tmp_path: Path) -> None:
    root = project_factory({"requirements.txt": ""})
    config = tmp_path / "ci.toml"
    config.write_text("[lint]\npaths = ['src']\n")

    settings = load_settings(root, config).settings

    assert settings.lint.paths == ["src"]


def test_missing_config_file(project_factory: ProjectFactory, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(project_factory({"requirements.txt": ""}), tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("[build]\nbuild_args = 'x'\n", "'build.build_args'"),
        ("[lint]\npaths = 3\n", "'lint.paths'"),
        ("colour = 'red'\n", "unknown key 'colour'"),
        ("[deploy]\nx = 1\n", "unknown key 'deploy'"),
    ],
    ids=["dict-type", "list-type", "top-level-key", "unknown-section"],
)
def test_invalid_values_named(project_factory: ProjectFactory, content: str, fragment: str) -> None:
    root = project_factory({"pipeline.toml": content})

    with pytest.raises(ConfigError) as caught:
        load_settings(root)

    assert fragment in caught.value.message
    assert "pipeline.toml" in caught.value.message


@pytest.mark.parametrize("value", ["", ",", " , ", "[]"], ids=["empty", "comma", "blank", "json"])
def test_empty_severity_variable_rejected(
    project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("PIPELINE_SCAN__SEVERITY", value)

    message = config_error(project_factory({"requirements.txt": ""}))

    assert "'scan.severity'" in message
    assert "PIPELINE_SCAN__SEVERITY" in message
    assert "at least one" in message


def test_empty_severity_list_rejected(project_factory: ProjectFactory) -> None:
    root = project_factory({"pipeline.toml": "[scan]\nseverity = []\n"})

    message = config_error(root)

    assert "'scan.severity'" in message
    assert "pipeline.toml" in message


def test_severity_json_variable(
    project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIPELINE_SCAN__SEVERITY", '["high", "CRITICAL"]')

    settings = load_settings(project_factory({"requirements.txt": ""})).settings

    assert settings.scan.severity == ["HIGH", "CRITICAL"]


def test_unknown_severity_names_item(project_factory: ProjectFactory) -> None:
    root = project_factory({"pipeline.toml": "[scan]\nseverity = ['HIGH', 'SEVERE']\n"})

    message = config_error(root)

    assert "'scan.severity'" in message
    assert "scan.severity.1" not in message
    assert "'SEVERE'" in message


@pytest.mark.parametrize(
    ("variable", "value", "kind"),
    [
        ("PIPELINE_LINT__PATHS", "not json", "list"),
        ("PIPELINE_LINT__PATHS", "['src']", "list"),
        ("PIPELINE_BUILD__BUILD_ARGS", "A=1", "dict"),
        ("PIPELINE_LINT", "{paths: 1}", "table"),
    ],
    ids=["list", "python-list", "dict", "section"],
)
def test_variable_json_error_named(
    project_factory: ProjectFactory,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    kind: str,
) -> None:
    monkeypatch.setenv(variable, value)
    monkeypatch.setenv("PIPELINE_LINT__IMAGE", "python:3.12-slim")  # plain text

    message = config_error(project_factory({"requirements.txt": ""}))

    assert f"{variable}={value!r}" in message
    assert "not valid JSON" in message
    assert "EnvSettingsSource" not in message
    assert "PIPELINE_LINT__IMAGE" not in message
    example = message.split(f"for example {variable}=", 1)[1].split("\n")[0]
    assert isinstance(json.loads(example.strip("'")), dict if kind != "list" else list)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("build.dockerfile", "/etc/shadow"),
        ("build.dockerfile", "../Dockerfile"),
        ("build.dockerfile", "escape/shadow"),
        ("build.context", ".."),
        ("scan.ignorefile", "/etc/passwd"),
        ("lint.config", "../setup.cfg"),
        ("reports_dir", "/tmp/reports"),
        ("reports_dir", "."),
        ("reports_dir", "sub/.."),
        ("reports_dir", "requirements.txt"),
        ("reports_dir", ""),
        ("build.dockerfile", ""),
    ],
)
def test_paths_outside_project_rejected(
    project_factory: ProjectFactory, key: str, value: str
) -> None:
    section, _, name = key.rpartition(".")
    table = f"[{section}]\n" if section else ""
    root = project_factory(
        {"requirements.txt": "", "pipeline.toml": f"{table}{name} = {json.dumps(value)}\n"}
    )
    (root / "escape").symlink_to("/etc", target_is_directory=True)

    message = config_error(root)

    assert f"'{key}'" in message
    assert repr(value) in message
    assert "pipeline.toml" in message
    assert "root:" not in message  # no file content, such as /etc/shadow lines


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("build.dockerfile", "docker/Dockerfile"),
        ("build.context", "."),
        ("build.context", "app/../app"),
        ("reports_dir", "ci/reports"),
        ("lint.config", "config/flake8.cfg"),
    ],
)
def test_paths_inside_project_accepted(
    project_factory: ProjectFactory, key: str, value: str
) -> None:
    section, _, name = key.rpartition(".")
    table = f"[{section}]\n" if section else ""
    root = project_factory(
        {"requirements.txt": "", "pipeline.toml": f"{table}{name} = {json.dumps(value)}\n"}
    )

    settings = load_settings(root).settings

    node: object = settings
    for part in key.split("."):
        node = getattr(node, part)
    assert node == value


def test_ca_bundle_home_expanded(
    project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "corp-ca.pem").write_text(CERTIFICATE)
    monkeypatch.setenv("HOME", str(home))
    root = project_factory({"requirements.txt": "", "pipeline.toml": "ca_bundle = '~/corp-ca.pem'\n"})

    settings = load_settings(root).settings

    assert resolve_ca_bundle(settings, root) == home / "corp-ca.pem"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("root:$6$salt$hash:19000:0:99999:7:::\n", "no PEM certificate"),
        (CERTIFICATE + PRIVATE_KEY, "private key"),
        (CERTIFICATE.replace("CERTIFICATE", "RSA PRIVATE KEY"), "private key"),
        (CERTIFICATE + CERTIFICATE.replace("CERTIFICATE", "PUBLIC KEY"), "PUBLIC KEY"),
        ("", "no PEM certificate"),
    ],
    ids=["shadow-like", "cert-and-key", "rsa-key", "other-block", "empty"],
)
def test_ca_bundle_content_checked(
    project_factory: ProjectFactory, tmp_path: Path, content: str, fragment: str
) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(content)
    root = project_factory({"requirements.txt": "", "pipeline.toml": f"ca_bundle = '{bundle}'\n"})

    message = config_error(root)

    assert "'ca_bundle'" in message
    assert fragment in message
    assert "root:$6$" not in message


def test_ca_bundle_accepted(project_factory: ProjectFactory) -> None:
    root = project_factory(
        {
            "requirements.txt": "",
            "certs/ca.pem": "# Issuer: Corp\n" + CERTIFICATE + CERTIFICATE,
            "pipeline.toml": "ca_bundle = 'certs/ca.pem'\n",
        }
    )

    settings = load_settings(root).settings

    assert resolve_ca_bundle(settings, root) == root / "certs" / "ca.pem"


def test_ca_bundle_checked_on_resolve(tmp_path: Path) -> None:
    secret = tmp_path / "key.pem"
    secret.write_text(PRIVATE_KEY)
    settings = Settings(ca_bundle=str(secret))

    with pytest.raises(ConfigError, match="private key"):
        resolve_ca_bundle(settings, tmp_path)


@pytest.mark.parametrize("key", ["image", "lint.image", "test.image", "scan.image"])
@pytest.mark.parametrize(
    "value", ["", "Python:3.11", "python:", "python 3", "-python", "python:3.11@sha256:abc"]
)
def test_invalid_image_rejected(project_factory: ProjectFactory, key: str, value: str) -> None:
    section, _, name = key.rpartition(".")
    table = f"[{section}]\n" if section else ""
    root = project_factory({"pipeline.toml": f"{table}{name} = {json.dumps(value)}\n"})

    message = config_error(root)

    assert f"'{key}'" in message
    assert repr(value) in message


@pytest.mark.parametrize(
    "value",
    [
        "python:3.11-slim",
        "127.0.0.1:5000/library/python:3.11-slim",
        "Registry.example.com/team/app",
        "localhost:5000/a/b:c",
        "ghcr.io/org/app@sha256:" + "a" * 64,
        "my__app_v2.1-x",
    ],
)
def test_valid_image_accepted(project_factory: ProjectFactory, value: str) -> None:
    root = project_factory({"pipeline.toml": f"[scan]\nimage = {json.dumps(value)}\n"})

    assert load_settings(root).settings.scan.image == value


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("MyApp", "must be lowercase: write 'myapp'"),
        ("app:1.0", "no tag"),
        ("a..b", "not a valid repository name"),
        ("", "not a valid repository name"),
        ("team/-app", "not a valid repository name"),
    ],
)
def test_invalid_image_name_rejected(
    project_factory: ProjectFactory, value: str, fragment: str
) -> None:
    root = project_factory({"pipeline.toml": f"[build]\nimage_name = {json.dumps(value)}\n"})

    message = config_error(root)

    assert "'build.image_name'" in message
    assert fragment in message


@pytest.mark.parametrize("value", ["app", "registry.local:5000/team/my_app", "a__b", "a--b.c"])
def test_valid_image_name_accepted(project_factory: ProjectFactory, value: str) -> None:
    root = project_factory({"pipeline.toml": f"[build]\nimage_name = {json.dumps(value)}\n"})

    assert load_settings(root).settings.build.image_name == value


@pytest.mark.parametrize("name", ["A=B", "1X", "", "WITH SPACE", "dash-name"])
def test_invalid_build_arg_name_rejected(project_factory: ProjectFactory, name: str) -> None:
    root = project_factory(
        {"pipeline.toml": f"[build.build_args]\n{json.dumps(name)} = 'v'\n"}
    )

    message = config_error(root)

    assert "'build.build_args'" in message
    assert f"invalid build argument name {name!r}" in message


def test_build_arg_names_accepted(project_factory: ProjectFactory) -> None:
    root = project_factory({"pipeline.toml": "[build.build_args]\nPY_VERSION = '3.11'\n_x1 = ''\n"})

    settings = load_settings(root).settings

    assert settings.build.build_args == {"PY_VERSION": "3.11", "_x1": ""}


def test_named_user_config_missing(
    project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PIPELINE_USER_CONFIG", str(tmp_path / "absent.toml"))

    message = config_error(project_factory({"requirements.txt": ""}))

    assert "user config not found" in message
    assert "absent.toml" in message
    assert "PIPELINE_USER_CONFIG" in message


def test_user_config_folder_rejected(
    project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PIPELINE_USER_CONFIG", str(tmp_path))

    message = config_error(project_factory({"requirements.txt": ""}))

    assert "is a folder" in message


def test_default_user_config_optional(
    project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PIPELINE_USER_CONFIG")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config-home"))

    settings = load_settings(project_factory({"requirements.txt": ""})).settings

    assert settings.docker_cli == "docker"


def test_config_option_folder(project_factory: ProjectFactory, tmp_path: Path) -> None:
    folder = tmp_path / "settings"
    folder.mkdir()

    message = config_error(project_factory({"requirements.txt": ""}), folder)

    assert "is a folder" in message
    assert "not found" not in message


@pytest.mark.parametrize("name", ["pipeline.toml", "pyproject.toml"])
def test_settings_file_folder_rejected(project_factory: ProjectFactory, name: str) -> None:
    root = project_factory({"requirements.txt": "", f"{name}/x": ""})

    message = config_error(root)

    assert f"{root / name} is a folder" in message


def test_non_utf8_settings_rejected(project_factory: ProjectFactory) -> None:
    root = project_factory({"requirements.txt": ""})
    (root / "pipeline.toml").write_bytes(b"image = 'caf\xe9'\n")

    message = config_error(root)

    assert "pipeline.toml" in message
    assert "not valid UTF-8" in message


@pytest.mark.parametrize(
    ("content", "key"),
    [("tool = 'x'\n", "'tool'"), ("[tool]\npipeline = 3\n", "'tool.pipeline'")],
    ids=["tool", "tool-pipeline"],
)
def test_pyproject_tool_not_table(
    project_factory: ProjectFactory, content: str, key: str
) -> None:
    root = project_factory({"requirements.txt": "", "pyproject.toml": content})

    message = config_error(root)

    assert key in message
    assert "pyproject.toml" in message
    assert "not a table" in message


def test_test_timeout_setting(
    project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIPELINE_TEST__TIMEOUT", "90")

    settings = load_settings(project_factory({"requirements.txt": ""})).settings

    assert settings.test.timeout == 90


@pytest.mark.parametrize("value", ["0", "-5", "true", "1.5", "'ten'"])
def test_invalid_test_timeout(project_factory: ProjectFactory, value: str) -> None:
    root = project_factory({"pipeline.toml": f"[test]\ntimeout = {value}\n"})

    message = config_error(root)

    assert "invalid value for 'test.timeout'" in message


def test_ca_bundle_from_pip_cert(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bundle = tmp_path / "corp-ca.pem"
    bundle.write_text(CERTIFICATE)
    for name in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_CERT", str(bundle))

    assert host_ca_bundle() == bundle


def test_reference_doc_current() -> None:
    from pipeline.config import reference_table

    doc = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()

    assert reference_table() in doc, "regenerate with: python -m pipeline.config"


def test_docker_cli_not_from_project(project_factory: ProjectFactory) -> None:
    root = project_factory({"pipeline.toml": 'docker_cli = "/tmp/evil"\n'})

    with pytest.raises(ConfigError) as caught:
        load_settings(root)

    assert "'docker_cli' cannot be set in the project's settings" in caught.value.message
    assert caught.value.hint is not None
    assert "PIPELINE_DOCKER_CLI" in caught.value.hint


def test_absolute_reports_dir_from_the_host_accepted(
    project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # GitLab keeps artifacts only under $CI_PROJECT_DIR, so a CI job points
    # the reports of a subproject there with PIPELINE_REPORTS_DIR.
    root = project_factory({"requirements.txt": ""})
    target = str(tmp_path / "ci-reports")
    monkeypatch.setenv("PIPELINE_REPORTS_DIR", target)

    assert load_settings(root).settings.reports_dir == target


def test_absolute_reports_dir_from_the_project_rejected(
    project_factory: ProjectFactory, tmp_path: Path
) -> None:
    target = str(tmp_path / "elsewhere")
    root = project_factory(
        {"requirements.txt": "", "pipeline.toml": f"reports_dir = {json.dumps(target)}\n"}
    )

    message = config_error(root)

    assert "'reports_dir'" in message
    assert "absolute path" in message


def test_environment_settings_validated(project_factory: ProjectFactory) -> None:
    settings = (
        "[environments.Staging]\n"
        'registry = { repository = "127.0.0.1:5001/shop" }\n'
        'target = { kind = "nomad" }\n'
    )
    root = project_factory({"requirements.txt": "", "pipeline.toml": settings})

    message = config_error(root)

    assert "environments.Staging.target" in message
    assert "'swarm', 'kubernetes'" in message
