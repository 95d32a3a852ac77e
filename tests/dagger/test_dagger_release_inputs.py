"""Publish and release on Dagger: the checks of the functions' arguments,
what each deploy target needs, and where the settings' paths are inside the
pipeline's own image."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from dagger_standin import StandInSession, client_for, find_calls

from pipeline.backends import dagger_release
from pipeline.backends.dagger_release import (
    DeployInputs,
    check_commit,
    check_credentials,
    check_inputs,
    deploy_container,
    in_container,
    needs_docker_socket,
    publish_target,
    secret_references,
    socket_path,
    tool_image,
    user_reference,
    user_values,
)
from pipeline.config import EnvironmentSettings
from pipeline.errors import UsageError

pytest_plugins = ["dagger_fixtures"]

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE = "registry.example.test/app@sha256:" + "a" * 64


def environment(target: dict[str, Any], **changes: Any) -> EnvironmentSettings:
    fields: dict[str, Any] = {
        "registry": {"repository": "registry.example.test/app"},
        "target": target,
    }
    fields.update(changes)
    return EnvironmentSettings.model_validate(fields)


SWARM = {"kind": "swarm"}
KUBERNETES = {"kind": "kubernetes"}


# -- the pipeline's image -------------------------------------------------------


def test_tool_user_matches_dockerfile() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()

    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert users[-1] == dagger_release.TOOL_USER
    assert f"--uid {dagger_release.TOOL_USER}" in dockerfile
    assert f"WORKDIR {dagger_release.TOOL_PACKAGE}" in dockerfile


def test_tool_source_holds_dockerfile_inputs() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()

    copied = {
        source
        for line in re.findall(r"^COPY\s+(.+)$", dockerfile, re.MULTILINE)
        for source in line.split()[:-1]
        if not source.startswith("--")
    }
    assert copied
    assert copied <= set(dagger_release.TOOL_SOURCE_FILES)
    assert "Dockerfile" in dagger_release.TOOL_SOURCE_FILES


# -- what a deploy needs --------------------------------------------------------


def test_secret_references_listed_once() -> None:
    env = environment(
        SWARM,
        secrets={"TOKEN": "env://APP_TOKEN", "AGAIN": "env://APP_TOKEN"},
        registry={
            "repository": "registry.example.test/app",
            "username": "ci",
            "password": "file:///run/registry",
        },
    )

    assert secret_references(env) == ["env://APP_TOKEN", "file:///run/registry"]


@pytest.mark.parametrize(
    ("username", "reference"),
    [("ci", None), ("env://REGISTRY_USER", "env://REGISTRY_USER"), (None, None)],
)
def test_user_reference(username: str | None, reference: str | None) -> None:
    env = environment(SWARM, registry={"repository": "r.example.test/app", "username": username})

    assert user_reference(env) == reference


@pytest.mark.parametrize(
    ("target", "needed"),
    [
        (SWARM, True),
        ({"kind": "swarm", "docker_host": "unix:///run/user/1000/docker.sock"}, True),
        ({"kind": "swarm", "docker_host": "tcp://manager.example.test:2376"}, False),
        ({"kind": "swarm", "docker_host": "ssh://deploy@manager.example.test"}, False),
        (KUBERNETES, False),
    ],
)
def test_docker_socket_needed(target: dict[str, Any], needed: bool) -> None:
    assert needs_docker_socket(environment(target)) is needed


def test_socket_path_follows_docker_host() -> None:
    env = environment({"kind": "swarm", "docker_host": "unix:///run/user/1000/docker.sock"})

    assert socket_path(env) == "/run/user/1000/docker.sock"
    assert socket_path(environment(SWARM)) == "/var/run/docker.sock"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/run/keys/db", "/run/keys/db"),
        ("deploy/kubeconfig", "/workspace/project/deploy/kubeconfig"),
        ("~/.kube/config", "/home/pipeline/.kube/config"),
    ],
)
def test_paths_in_container(path: str, expected: str) -> None:
    assert in_container(path) == expected


# -- checks before anything runs ----------------------------------------------


def inputs_for(env: EnvironmentSettings, **changes: Any) -> DeployInputs:
    fields: dict[str, Any] = {"environment": "staging", "settings": env, "project": None}
    fields.update(changes)
    return DeployInputs(**fields)


def test_missing_inputs_all_named() -> None:
    env = environment(
        SWARM,
        secrets={"TOKEN": "env://APP_TOKEN"},
        registry={
            "repository": "registry.example.test/app",
            "username": "env://REGISTRY_USER",
            "password": "env://REGISTRY_PASSWORD",
        },
    )

    with pytest.raises(UsageError) as failure:
        check_inputs(inputs_for(env))

    message = failure.value.message
    assert "--docker-socket=/var/run/docker.sock" in message
    assert "env://APP_TOKEN, env://REGISTRY_PASSWORD" in message
    assert "env://REGISTRY_USER names (--username)" in message
    assert failure.value.hint is not None


def test_kubernetes_needs_kubeconfig() -> None:
    with pytest.raises(UsageError, match="--kubeconfig"):
        check_inputs(inputs_for(environment(KUBERNETES)))


def test_ssh_swarm_rejected() -> None:
    env = environment({"kind": "swarm", "docker_host": "ssh://deploy@manager.example.test"})

    with pytest.raises(UsageError, match="over SSH"):
        check_inputs(inputs_for(env))


def test_remote_swarm_needs_no_socket() -> None:
    env = environment({"kind": "swarm", "docker_host": "tcp://manager.example.test:2376"})

    check_inputs(inputs_for(env))


# -- the container --------------------------------------------------------------


@pytest.mark.anyio
async def test_remote_swarm_container_queries(dagger_session: StandInSession) -> None:
    client = client_for(dagger_session)
    env = environment({"kind": "swarm", "docker_host": "tcp://manager.example.test:2376"})
    inputs = inputs_for(env, project=client.host().directory("/srv/project"))
    tool = tool_image(client.host().directory("/srv/pipeline"), kubernetes=False)

    await deploy_container(tool, inputs, IMAGE, "run-1").exit_code()

    assert dagger_session.validation_errors() == []
    request = dagger_session.requests[-1]
    assert request.leaf.field == "exitCode"
    assert find_calls(request.calls, "withUnixSocket") == []
    names = [call.args["name"] for call in find_calls(request.calls, "withEnvVariable")]
    assert names == [dagger_release.DEPLOY_ID_ENV]
    command = find_calls(request.calls, "withExec")[-1]
    assert command.args["args"][-1] == IMAGE
    assert command.args["expect"] == "ANY"


@pytest.mark.anyio
async def test_config_file_passed(dagger_session: StandInSession) -> None:
    client = client_for(dagger_session)
    inputs = inputs_for(
        environment({"kind": "swarm", "docker_host": "tcp://manager.example.test:2376"}),
        project=client.host().directory("/srv/project"),
        config=client.host().file("/srv/settings/ci.toml"),
        config_name="ci.toml",
    )
    tool = tool_image(client.host().directory("/srv/pipeline"), kubernetes=False)

    await deploy_container(tool, inputs, IMAGE, "run-1").exit_code()

    request = dagger_session.requests[-1]
    assert request.leaf.field == "exitCode"
    [config] = find_calls(request.calls, "withFile")
    assert config.args["path"] == "/workspace/config/ci.toml"
    assert config.args["owner"] == dagger_release.TOOL_USER
    command = find_calls(request.calls, "withExec")[-1].args["args"]
    assert command[command.index("--config") + 1] == "/workspace/config/ci.toml"


# -- arguments ------------------------------------------------------------------


def test_commit_normalized() -> None:
    assert check_commit(" " + "AB12" * 10 + "\n") == "ab12" * 10
    assert check_commit("c" * 64) == "c" * 64


@pytest.mark.parametrize("commit", ["", "HEAD", "ab12" * 9, "g" * 40, "a" * 41])
def test_invalid_commit_rejected(commit: str) -> None:
    with pytest.raises(UsageError, match="invalid commit"):
        check_commit(commit)


def test_address_becomes_environment() -> None:
    name, overrides = publish_target("", "registry.example.test/app", "robot", True)

    assert name == dagger_release.ADDRESS_ENVIRONMENT
    registry = overrides["environments"][name]["registry"]
    assert registry == {
        "repository": "registry.example.test/app",
        "username": "robot",
        "password": dagger_release.ADDRESS_PASSWORD,
    }
    EnvironmentSettings.model_validate(overrides["environments"][name])


def test_environment_keeps_settings() -> None:
    assert publish_target("staging", "", "", True) == ("staging", {})
    name, overrides = publish_target("staging", "", "robot", True)
    assert overrides == {"environments": {"staging": {"registry": {"username": "robot"}}}}


def test_password_filed_under_reference() -> None:
    env = environment(
        SWARM,
        registry={
            "repository": "registry.example.test/app",
            "username": "ci",
            "password": "file:///run/registry",
        },
    )

    assert check_credentials("staging", env, "", True) == "file:///run/registry"
    assert user_values(env, "robot") == {}


def test_anonymous_registry_needs_nothing() -> None:
    assert check_credentials("staging", environment(SWARM), "", False) is None
