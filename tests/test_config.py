"""Settings: defaults, file layers, variables and the errors they give."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import host_ca_bundle, load_settings
from pipeline.errors import ConfigError

from conftest import ProjectFactory


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("PIPELINE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PIPELINE_USER_CONFIG", str(tmp_path / "no-user-config.toml"))


def test_defaults_without_config(project_factory: ProjectFactory) -> None:
    settings = load_settings(project_factory({"requirements.txt": ""})).settings

    assert settings.image == "python:3.11-slim"
    assert settings.scan.severity == ["HIGH", "CRITICAL"]
    assert settings.scan.ignore_unfixed is False
    assert settings.scan.allow_missing_vuln_db is False
    assert settings.test.allow_no_tests is False
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


def test_ca_bundle_from_pip_cert(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bundle = tmp_path / "corp-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    for name in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_CERT", str(bundle))

    assert host_ca_bundle() == bundle


def test_reference_doc_current() -> None:
    from pipeline.config import reference_table

    doc = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()

    assert reference_table() in doc, "regenerate with: python -m pipeline.config"
