"""Publish and release in the Dagger module: checks of the functions'
arguments, and the deploy container.

A Dagger function has no ``.git`` and reaches the caller's variables,
files, Docker socket and kubeconfig only through its arguments. The checks
here reject a call that lacks one of them before anything is built, naming
the argument to pass.

The release deploys from a container built from this repository's
Dockerfile, where the same ``pipeline deploy`` command as on a host reads
what it needs from the usual places: the secrets from the variables and
files that the settings' references name, the socket from DOCKER_HOST, the
kubeconfig from KUBECONFIG or the ``kubeconfig`` setting.

Nothing here sends a query: the functions chain lazy dagger-io objects, so
the queries can be validated against the engine's schema without an engine.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import dagger

from ..audit import ACTOR_VARIABLES
from ..config import EnvironmentSettings
from ..errors import UsageError
from ..secrets import parse_uri

# The user of the pipeline's Dockerfile (USER 10001, home /home/pipeline).
# Mounted files and sockets are given to it, because the deploy runs as it.
TOOL_USER = "10001"
TOOL_HOME = "/home/pipeline"
# The folder that the Dockerfile copies the package to and installs it from.
TOOL_PACKAGE = "/opt/pipeline"
PROJECT_PATH = "/workspace/project"
CONFIG_DIR = "/workspace/config"
DOCKER_SOCKET = "/var/run/docker.sock"
DEFAULT_KUBECONFIG = f"{TOOL_HOME}/.kube/config"
# A variable whose value differs on every release, so that the engine never
# serves a deploy from its cache.
DEPLOY_ID_ENV = "PIPELINE_DEPLOY_ID"
ACTOR_ENV = ACTOR_VARIABLES[0]
# A full git commit hash: SHA-1, or SHA-256 in repositories that use it.
COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# `publish --address` pushes as if to an environment of this name, whose
# registry is the address. Its target is never deployed to.
ADDRESS_ENVIRONMENT = "dagger-address"
# The reference that the password of `publish --address` is filed under.
ADDRESS_PASSWORD = "env://REGISTRY_PASSWORD"
# Dockerfile and package files that the tool image is built from.
TOOL_SOURCE_FILES = ["Dockerfile", "pyproject.toml", "README.md", "pipeline"]
TOOL_SOURCE_IGNORE = [
    "*",
    *(f"!{name}" for name in TOOL_SOURCE_FILES),
    "**/__pycache__",
]


@dataclass(frozen=True)
class DeployInputs:
    """The inputs of the deploy container besides the image to deploy.

    ``secrets`` are Dagger secrets by the reference (``env://NAME`` or
    ``file://PATH``) in the settings that they stand for, and ``values``
    plain values by reference, such as a registry user name.
    """

    environment: str
    settings: EnvironmentSettings
    project: dagger.Directory
    config: dagger.File | None = None
    config_name: str = "pipeline.toml"
    docker_socket: dagger.Socket | None = None
    kubeconfig: dagger.Secret | None = None
    secrets: Mapping[str, dagger.Secret] = field(default_factory=dict)
    values: Mapping[str, str] = field(default_factory=dict)
    approved_by: str | None = None
    actor: str | None = None


# -- arguments ----------------------------------------------------------------


def check_commit(commit: str) -> str:
    """Return the commit hash in lowercase, or raise UsageError."""
    normalized = commit.strip().lower()
    if not COMMIT.fullmatch(normalized):
        raise UsageError(
            f"invalid commit {commit!r}: pass the full commit hash of the source "
            "(40 hexadecimal digits); nothing was built or pushed",
            hint="pass --commit=$GITHUB_SHA on GitHub Actions or "
            "--commit=$CI_COMMIT_SHA on GitLab CI",
        )
    return normalized


def check_release_tag(tag: str) -> str:
    tag = tag.strip()
    if not tag:
        raise UsageError(
            "release needs the git tag that is released; nothing was built or pushed",
            hint="pass --tag=$GITHUB_REF_NAME in a tag workflow on GitHub Actions "
            "or --tag=$CI_COMMIT_TAG on GitLab CI",
        )
    return tag


def publish_target(
    environment: str, address: str, username: str, has_password: bool
) -> tuple[str, dict[str, Any]]:
    """Return the environment to publish to, and the settings overrides that
    ``--address`` and ``--username`` stand for."""
    if bool(environment) == bool(address):
        raise UsageError(
            "publish needs either --environment or --address, and not both; "
            "nothing was built or pushed",
            hint="pass --environment=NAME for an environment of the settings, or "
            "--address=HOST/PATH/NAME for another repository",
        )
    if environment:
        return environment, user_override(environment, username) if username else {}
    registry = {
        "repository": address,
        "username": username or None,
        "password": ADDRESS_PASSWORD if has_password else None,
    }
    # The settings require a target, which a publish never uses.
    synthetic = {"registry": registry, "target": {"kind": "swarm"}}
    return ADDRESS_ENVIRONMENT, {"environments": {ADDRESS_ENVIRONMENT: synthetic}}


def user_override(environment: str, username: str) -> dict[str, Any]:
    """Return the settings overrides that replace the environment's registry user."""
    return {"environments": {environment: {"registry": {"username": username}}}}


def check_credentials(
    name: str, settings: EnvironmentSettings, username: str, has_password: bool
) -> str | None:
    """Return the reference that the given password stands for, or None.

    Raises UsageError when a credential that the settings name by reference
    is not given, or when a given one has no place in the settings.
    """
    registry = settings.registry
    where = "--address" if name == ADDRESS_ENVIRONMENT else f"environment {name!r}"
    if username and not has_password and registry.password is None:
        raise UsageError(
            "--username is given without --password; nothing was built or pushed",
            hint="pass the password too, such as --password=env://REGISTRY_PASSWORD",
        )
    if has_password and registry.password is None:
        raise UsageError(
            f"--password is given, but the registry of {where} has no password "
            "setting; nothing was built or pushed",
            hint=f"set environments.{name}.registry.password to the reference that "
            "the CI uses, such as \"env://REGISTRY_PASSWORD\", or drop --password",
        )
    if registry.password is not None and not has_password:
        raise UsageError(
            f"the registry of {where} needs its password ({registry.password}), "
            "which the module cannot read; nothing was built or pushed",
            hint=f"pass --password={registry.password}",
        )
    if registry.password is not None and not (username or registry.username):
        raise UsageError(
            f"the registry of {where} has a password but no user name; nothing "
            "was built or pushed",
            hint="pass --username=USER",
        )
    reference = user_reference(settings)
    if reference is not None and not username:
        raise UsageError(
            f"the registry user of {where} is {reference}, which the module cannot "
            "read; nothing was built or pushed",
            hint="pass --username=USER",
        )
    return registry.password


def user_values(settings: EnvironmentSettings, username: str) -> dict[str, str]:
    """Map a user name reference of the settings to the given user name."""
    reference = user_reference(settings)
    if reference is None or not username:
        return {}
    return {reference: username}


# -- the deploy container -------------------------------------------------------


def secret_references(settings: EnvironmentSettings) -> list[str]:
    """Return the references that a deploy to the environment resolves.

    They are the service's secrets and the registry password, and the
    registry user name when it is a reference too.
    """
    references = list(settings.secrets.values())
    registry = settings.registry
    if registry.password is not None:
        references.append(registry.password)
    return list(dict.fromkeys(references))


def user_reference(settings: EnvironmentSettings) -> str | None:
    """Return the registry user name's reference, or None for a plain name."""
    username = settings.registry.username
    if username is not None and re.match(r"(env|file)://", username):
        return username
    return None


def needs_docker_socket(settings: EnvironmentSettings) -> bool:
    """Return whether the deploy talks to a Docker Engine through a socket of the caller.

    A swarm with a ``docker_host`` such as tcp://manager:2376 is reached
    over the network instead.
    """
    target = settings.target
    if target.kind != "swarm":
        return False
    return target.docker_host is None or target.docker_host.startswith("unix://")


def check_inputs(inputs: DeployInputs) -> None:
    """Raise UsageError naming every input that the environment needs and lacks."""
    name = inputs.environment
    target = inputs.settings.target
    if target.kind == "swarm" and (target.docker_host or "").startswith("ssh://"):
        raise UsageError(
            f"environment {name!r} reaches its swarm manager over SSH "
            f"({target.docker_host}), which the deploy container of the Dagger "
            "module cannot do, because no SSH key reaches it",
            hint="deploy this environment with `pipeline release` on a host, or "
            "pass the manager's socket with --docker-socket",
        )
    missing = []
    if needs_docker_socket(inputs.settings) and inputs.docker_socket is None:
        missing.append(
            "the swarm manager's Docker socket (--docker-socket=/var/run/docker.sock)"
        )
    if inputs.settings.target.kind == "kubernetes" and inputs.kubeconfig is None:
        missing.append("a kubeconfig (--kubeconfig=file://$HOME/.kube/config)")
    absent = [ref for ref in secret_references(inputs.settings) if ref not in inputs.secrets]
    if absent:
        missing.append(
            "the secrets " + ", ".join(absent) + " (--secrets="
            + ",".join(absent) + ", or --password for the registry password)"
        )
    user = user_reference(inputs.settings)
    if user is not None and user not in inputs.values:
        missing.append(f"the registry user name that {user} names (--username)")
    if missing:
        raise UsageError(
            f"environment {name!r} cannot be deployed to from Dagger without "
            + "; ".join(missing),
            hint="pass them to the function; the caller's variables and files "
            "do not reach the module",
        )


def tool_image(source: dagger.Directory, kubernetes: bool) -> dagger.Container:
    """Build the pipeline's own image, with kubectl for a Kubernetes deploy.

    The Dockerfile's EXTRAS build argument adds the Kubernetes extra
    (kubectl, the manifest schemas).
    """
    if kubernetes:
        return source.docker_build(build_args=[dagger.BuildArg(name="EXTRAS", value="kubernetes")])
    return source.docker_build()


def in_container(path: str) -> str:
    """Return where a path of the settings is in the deploy container.

    Relative paths start at the project, as they do on a host, and ``~`` is
    the tool user's home.
    """
    if path == "~" or path.startswith("~/"):
        return TOOL_HOME + path[1:]
    posix = PurePosixPath(path)
    if posix.is_absolute():
        return str(posix)
    return str(PurePosixPath(PROJECT_PATH) / posix)


def kubeconfig_path(settings: EnvironmentSettings) -> str:
    target = settings.target
    if target.kind == "kubernetes" and target.kubeconfig is not None:
        return in_container(target.kubeconfig)
    return DEFAULT_KUBECONFIG


def socket_path(settings: EnvironmentSettings) -> str:
    target = settings.target
    if target.kind == "swarm" and target.docker_host is not None:
        if target.docker_host.startswith("unix://"):
            return target.docker_host.removeprefix("unix://")
    return DOCKER_SOCKET


def deploy_command(inputs: DeployInputs, image: str) -> list[str]:
    command = [
        "pipeline",
        "deploy",
        "--env",
        inputs.environment,
        "--project",
        PROJECT_PATH,
        "--json",
    ]
    if inputs.config is not None:
        command += ["--config", f"{CONFIG_DIR}/{inputs.config_name}"]
    if inputs.approved_by:
        command += ["--approved-by", inputs.approved_by]
    return [*command, image]


def deploy_container(
    tool: dagger.Container, inputs: DeployInputs, image: str, deploy_id: str
) -> dagger.Container:
    """Chain the container that runs ``pipeline deploy`` for one image.

    Secrets reach it only as secret variables and secret mounts. Its
    command may exit with any code, so that the caller reads its output.
    """
    container = tool.with_directory(PROJECT_PATH, inputs.project, owner=TOOL_USER)
    if inputs.config is not None:
        path = f"{CONFIG_DIR}/{inputs.config_name}"
        container = container.with_file(path, inputs.config, owner=TOOL_USER)
    container = container.with_workdir(PROJECT_PATH)
    settings = inputs.settings
    if inputs.docker_socket is not None and settings.target.kind == "swarm":
        path = socket_path(settings)
        container = container.with_unix_socket(path, inputs.docker_socket, owner=TOOL_USER)
        if settings.target.docker_host is None:
            container = container.with_env_variable("DOCKER_HOST", f"unix://{path}")
    if inputs.kubeconfig is not None and settings.target.kind == "kubernetes":
        path = kubeconfig_path(settings)
        container = container.with_mounted_secret(path, inputs.kubeconfig, owner=TOOL_USER)
        container = container.with_env_variable("KUBECONFIG", path)
    for reference in secret_references(settings):
        container = _with_secret(container, reference, inputs.secrets[reference])
    user = user_reference(settings)
    if user is not None:
        container = _with_value(container, user, inputs.values[user])
    if inputs.actor:
        container = container.with_env_variable(ACTOR_ENV, inputs.actor)
    container = container.with_env_variable(DEPLOY_ID_ENV, deploy_id)
    return container.with_exec(
        deploy_command(inputs, image), expect=dagger.ReturnType.ANY
    )


def _with_secret(
    container: dagger.Container, reference: str, secret: dagger.Secret
) -> dagger.Container:
    scheme, location = parse_uri(reference)
    if scheme == "env":
        return container.with_secret_variable(location, secret)
    return container.with_mounted_secret(in_container(location), secret, owner=TOOL_USER)


def _with_value(container: dagger.Container, reference: str, value: str) -> dagger.Container:
    scheme, location = parse_uri(reference)
    if scheme == "env":
        return container.with_env_variable(location, value)
    return container.with_new_file(in_container(location), value, owner=TOOL_USER)
