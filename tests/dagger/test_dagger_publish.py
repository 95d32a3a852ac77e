"""The Dagger backend's publish: the queries it sends and how it fails.

The image is built through the real build step and DaggerBackend, with a
stand-in session in place of an engine. The stand-in responds to each
``Container.publish`` with the address and a digest, or with a scripted
registry error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
import pytest
from dagger_standin import Call, Request, ScriptedEngine, StandInSession, find_calls

from pipeline.backends import dagger as dagger_backend_module
from pipeline.backends.dagger import DaggerBackend, check_registry, registry_of
from pipeline.errors import ConfigError, PublishFailed
from pipeline.run import Prepared
from pipeline.spec import PublishSpec, SecretRef
from pipeline.steps import build as build_step

pytest_plugins = ["dagger_fixtures"]
pytestmark = pytest.mark.anyio

Golden = Callable[[str, str], None]
COMMIT = "4f1c9e2a7b" * 4
TAGS = (COMMIT, "1.4.0", "1.4", "1", "latest")
REPOSITORY = "registry.example.test/team/sample-service"
PASSWORD = "fake-registry-password-93c1f0"
PASSWORD_ENV = "SAMPLE_REGISTRY_PASSWORD"


class Output:
    """Collects what the backend reports while it pushes."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str) -> None:
        self.lines.append(text)

    @property
    def text(self) -> str:
        return "".join(self.lines)


@pytest.fixture
def no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dagger_backend_module, "PUSH_RETRY_DELAY", 0.0)


@pytest.fixture
async def built_image(
    dagger_session: StandInSession, dagger_backend: DaggerBackend, prepared: Prepared
) -> str:
    """Build the sample project's image and forget the build's queries."""
    result = await build_step.run(prepared.context, dagger_backend, Output())
    assert result.image is not None
    dagger_session.requests.clear()
    return result.image


def publish_spec(image: str, **changes: object) -> PublishSpec:
    fields: dict[str, object] = {
        "name": "publish",
        "image": image,
        "repository": REPOSITORY,
        "tags": TAGS,
        "username": "ci",
        "password": SecretRef("registry-password", f"env://{PASSWORD_ENV}"),
    }
    fields.update(changes)
    return PublishSpec(**fields)  # type: ignore[arg-type]


def publish_requests(session: StandInSession) -> list[Request]:
    return [request for request in session.requests if request.leaf.field == "publish"]


def fields_holding(calls: list[Call], value: str) -> list[str]:
    """Name the calls with a plain argument that contains ``value``, except
    setSecret's plaintext. Arguments that are objects are searched too."""
    holders = []
    for call in calls:
        for name, argument in call.args.items():
            items = argument if isinstance(argument, list) else [argument]
            for item in items:
                if isinstance(item, list):
                    holders.extend(fields_holding(item, value))
                elif isinstance(item, dict):
                    if value in repr(item):
                        holders.append(f"{call.field}.{name}")
                elif isinstance(item, str) and value in item:
                    if (call.field, name) != ("setSecret", "plaintext"):
                        holders.append(f"{call.field}.{name}")
    return holders


@pytest.fixture
def password(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    return PASSWORD


# -- queries ----------------------------------------------------------------


async def test_publish_queries(
    dagger_session: StandInSession,
    dagger_backend: DaggerBackend,
    built_image: str,
    password: str,
    golden: Golden,
) -> None:
    await dagger_backend.publish(publish_spec(built_image), Output())

    assert dagger_session.validation_errors() == []
    requests = publish_requests(dagger_session)
    addresses = [request.leaf.args["address"] for request in requests]
    assert addresses == [f"{REPOSITORY}:{tag}" for tag in TAGS]
    secret = [Call("Query", "setSecret", {"name": "registry-password", "plaintext": password})]
    for request in requests:
        [auth] = find_calls(request.calls, "withRegistryAuth")
        assert auth.args == {"address": REPOSITORY, "username": "ci", "secret": secret}
        assert find_calls(request.calls, "dockerBuild"), "the push is not of the built image"
    golden("publish.graphql", dagger_session.transcript())


async def test_publish_returns_digest_reference(
    dagger_backend: DaggerBackend, scripted_engine: ScriptedEngine, built_image: str, password: str
) -> None:
    output = Output()

    published = await dagger_backend.publish(publish_spec(built_image), output)

    assert published.digest == scripted_engine.push_digest
    assert published.reference == f"{REPOSITORY}@{scripted_engine.push_digest}"
    assert published.tags == TAGS
    assert f"pushed {REPOSITORY}:{COMMIT}@{published.digest}" in output.text


async def test_publish_writes_log(
    dagger_backend: DaggerBackend, built_image: str, password: str, tmp_path: Path
) -> None:
    log_file = tmp_path / "reports" / "publish.log"

    await dagger_backend.publish(publish_spec(built_image, log_file=log_file), Output())

    lines = log_file.read_text().splitlines()
    assert lines[0].startswith(f"pushed {REPOSITORY}:{COMMIT}@sha256:")
    assert len(lines) == len(TAGS)


async def test_failed_publish_logged(
    dagger_backend: DaggerBackend,
    scripted_engine: ScriptedEngine,
    built_image: str,
    password: str,
    tmp_path: Path,
) -> None:
    scripted_engine.push_errors[":1.4"] = ["dial tcp: connect: connection refused"]
    log_file = tmp_path / "reports" / "publish.log"

    with pytest.raises(PublishFailed):
        await dagger_backend.publish(publish_spec(built_image, log_file=log_file), Output())

    text = log_file.read_text()
    assert "ERROR: pushing registry.example.test/team/sample-service:1.4 failed" in text
    assert password not in text


async def test_publish_commit_tag_first(
    dagger_backend: DaggerBackend, scripted_engine: ScriptedEngine, built_image: str, password: str
) -> None:
    spec = publish_spec(built_image, tags=(COMMIT, "latest"))

    await dagger_backend.publish(spec, Output())

    assert scripted_engine.pushed == [f"{REPOSITORY}:{COMMIT}", f"{REPOSITORY}:latest"]


async def test_password_only_in_set_secret(
    dagger_session: StandInSession, dagger_backend: DaggerBackend, built_image: str, password: str
) -> None:
    await dagger_backend.publish(publish_spec(built_image), Output())

    holders = [
        field
        for request in dagger_session.requests
        for field in fields_holding(request.calls, password)
    ]
    assert holders == []
    assert password not in dagger_session.transcript()


async def test_given_secret_replaces_reference(
    dagger_session: StandInSession, dagger_backend: DaggerBackend, built_image: str
) -> None:
    reference = f"env://{PASSWORD_ENV}"
    given = dagger_backend.inputs.client.secret("vault://registry#password")
    dagger_backend.inputs.secrets[reference] = given

    await dagger_backend.publish(publish_spec(built_image), Output())

    assert dagger_session.validation_errors() == []
    [first, *_] = publish_requests(dagger_session)
    [auth] = find_calls(first.calls, "withRegistryAuth")
    assert auth.args["secret"] == [Call("Query", "secret", {"uri": "vault://registry#password"})]
    names = [call.args["name"] for call in find_calls(first.calls, "setSecret")]
    assert "registry-password" not in names


async def test_anonymous_publish_has_no_auth(
    dagger_session: StandInSession, dagger_backend: DaggerBackend, built_image: str
) -> None:
    spec = publish_spec(built_image, username=None, password=None)

    await dagger_backend.publish(spec, Output())

    for request in publish_requests(dagger_session):
        assert find_calls(request.calls, "withRegistryAuth") == []


async def test_referenced_user_name_resolved(
    dagger_session: StandInSession,
    dagger_backend: DaggerBackend,
    built_image: str,
    password: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SAMPLE_REGISTRY_USER", "robot-ci\n")
    user = SecretRef("registry-user", "env://SAMPLE_REGISTRY_USER")

    await dagger_backend.publish(publish_spec(built_image, username=user), Output())

    [first, *_] = publish_requests(dagger_session)
    [auth] = find_calls(first.calls, "withRegistryAuth")
    assert auth.args["username"] == "robot-ci"


# -- failures ---------------------------------------------------------------


async def test_transient_errors_retried(
    dagger_backend: DaggerBackend,
    scripted_engine: ScriptedEngine,
    built_image: str,
    password: str,
    no_retry_delay: None,
) -> None:
    scripted_engine.push_errors[f":{COMMIT}"] = [
        "failed to push: unexpected status: 503 Service Unavailable",
        "failed to push: read tcp: connection reset by peer",
    ]
    output = Output()

    published = await dagger_backend.publish(publish_spec(built_image), output)

    assert published.tags == TAGS
    assert scripted_engine.pushed[0] == f"{REPOSITORY}:{COMMIT}"
    assert "attempt 1 of 4" in output.text
    assert "attempt 2 of 4" in output.text
    assert "attempt 3 of 4" not in output.text


async def test_transient_errors_give_up(
    dagger_backend: DaggerBackend,
    scripted_engine: ScriptedEngine,
    built_image: str,
    password: str,
    no_retry_delay: None,
) -> None:
    scripted_engine.push_errors[f":{COMMIT}"] = ["503 Service Unavailable"] * 3

    with pytest.raises(PublishFailed, match="503 Service Unavailable") as failure:
        await dagger_backend.publish(publish_spec(built_image, attempts=3), Output())

    assert failure.value.existing_tags == ()
    assert "no tag was pushed" in failure.value.message
    assert scripted_engine.pushed == []


async def test_failure_midway_names_tags(
    dagger_backend: DaggerBackend,
    scripted_engine: ScriptedEngine,
    built_image: str,
    password: str,
) -> None:
    scripted_engine.push_errors[":1.4"] = [
        "dial tcp 10.0.0.9:443: connect: connection refused",
        "unexpected second attempt",
    ]
    output = Output()

    with pytest.raises(PublishFailed) as failure:
        await dagger_backend.publish(publish_spec(built_image), output)

    assert failure.value.existing_tags == (COMMIT, "1.4.0")
    assert f"tags that point at {scripted_engine.push_digest} now: {COMMIT}, 1.4.0" in failure.value.message
    assert f"{REPOSITORY}:1.4 failed" in failure.value.message
    assert "retrying" not in output.text
    assert scripted_engine.push_errors[":1.4"] == ["unexpected second attempt"]


async def test_wrong_password_named(
    dagger_backend: DaggerBackend,
    scripted_engine: ScriptedEngine,
    built_image: str,
    password: str,
) -> None:
    scripted_engine.push_errors[f":{COMMIT}"] = [
        "failed to authorize: 401 Unauthorized",
        "unexpected second attempt",
    ]

    with pytest.raises(PublishFailed, match="rejected user 'ci'") as failure:
        await dagger_backend.publish(publish_spec(built_image), Output())

    assert failure.value.existing_tags == ()
    assert failure.value.hint is not None
    assert "password" in failure.value.hint
    assert scripted_engine.pushed == []


async def test_engine_error_redacted(
    dagger_backend: DaggerBackend,
    scripted_engine: ScriptedEngine,
    built_image: str,
    password: str,
) -> None:
    scripted_engine.push_errors[f":{COMMIT}"] = [f"denied: bad password {password}"]

    with pytest.raises(PublishFailed) as failure:
        await dagger_backend.publish(publish_spec(built_image), Output())

    assert password not in failure.value.message
    assert "***" in failure.value.message


async def test_digest_mismatch_rejected(
    dagger_backend: DaggerBackend,
    scripted_engine: ScriptedEngine,
    built_image: str,
    password: str,
) -> None:
    other = "sha256:" + "e2" * 32
    scripted_engine.push_digests[f"{REPOSITORY}:1.4.0"] = other

    with pytest.raises(PublishFailed, match=f"tag 1.4.0 points at {other}") as failure:
        await dagger_backend.publish(publish_spec(built_image), Output())

    assert failure.value.existing_tags == (COMMIT, "1.4.0")


async def test_loopback_registry_rejected(
    dagger_session: StandInSession, dagger_backend: DaggerBackend, built_image: str, password: str
) -> None:
    spec = publish_spec(built_image, repository="127.0.0.1:5000/sample-service")

    with pytest.raises(ConfigError, match="127.0.0.1:5000 .* is on loopback"):
        await dagger_backend.publish(spec, Output())

    assert dagger_session.requests == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"password": None}, "user 'ci' is given without a password"),
        ({"username": None}, "a password is given without a user name"),
        ({"tags": ()}, "nothing to publish"),
    ],
)
async def test_incomplete_spec_rejected(
    dagger_session: StandInSession,
    dagger_backend: DaggerBackend,
    built_image: str,
    password: str,
    changes: dict[str, object],
    message: str,
) -> None:
    with pytest.raises(ConfigError, match=message):
        await dagger_backend.publish(publish_spec(built_image, **changes), Output())

    assert publish_requests(dagger_session) == []


async def test_insecure_setting_noted(
    dagger_backend: DaggerBackend, built_image: str, password: str
) -> None:
    output = Output()

    await dagger_backend.publish(publish_spec(built_image, insecure=True), output)

    assert "registry.insecure has no effect on Dagger" in output.text


# -- registries -------------------------------------------------------------


@pytest.mark.parametrize(
    ("repository", "registry"),
    [
        ("app", "docker.io"),
        ("team/app", "docker.io"),
        ("registry.example.test/team/app", "registry.example.test"),
        ("registry.example.test:5000/app", "registry.example.test:5000"),
        ("localhost/app", "localhost"),
    ],
)
def test_registry_of_repository(repository: str, registry: str) -> None:
    assert registry_of(repository) == registry


@pytest.mark.parametrize(
    "repository",
    ["127.0.0.1:5000/app", "localhost:5000/app", "localhost/app", "[::1]:5000/app", "127.0.0.2/app"],
)
def test_loopback_registries_detected(repository: str) -> None:
    with pytest.raises(ConfigError, match="loopback"):
        check_registry(repository)


def test_reachable_registry_accepted() -> None:
    assert check_registry("10.0.0.5:5000/app") == "10.0.0.5:5000"
