"""The GraphQL queries that the Dagger backend sends for each step.

Each step runs through its real step module and DaggerBackend, with a
stand-in session in place of an engine. The recorded queries are validated
against the engine's schema, checked against the step description that the
Docker backend runs too, and compared with golden files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dagger_standin import Call, Request, ScriptedEngine, StandInSession, find_calls

from pipeline.backends.dagger import CACHE_KEY_PREFIX, DaggerBackend, dagger_excludes
from pipeline.results import Status
from pipeline.run import Prepared
from pipeline.spec import SecretMount, SecretRef, StepSpec
from pipeline.steps import build as build_step
from pipeline.steps import lint as lint_step
from pipeline.steps import scan as scan_step
from pipeline.steps import test as test_step

pytest_plugins = ["dagger_fixtures"]
pytestmark = pytest.mark.anyio

Golden = Callable[[str, str], None]
TEST_TOKEN = "fake-token-4f1c9e2a7b"
TEST_KEY = "fake-key-8d3e1b"
JUNIT = (
    '<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="1" '
    'failures="0" errors="0" skipped="0"></testsuite></testsuites>'
)


def noop(text: str) -> None:
    return None


def container_request(session: StandInSession) -> Request:
    """Return the request that runs a step's container through its setup."""
    syncs = [
        request
        for request in session.requests
        if request.leaf.field == "sync" and request.calls[0].field == "container"
    ]
    assert len(syncs) == 1, f"expected one container sync, got {len(syncs)}"
    return syncs[0]


def args_of(calls: list[Call], field: str, *names: str) -> list[tuple[Any, ...]]:
    return [
        tuple(call.args.get(name) for name in names)
        for call in find_calls(calls, field)
    ]


def host_call(field: str, **args: Any) -> list[Call]:
    return [Call("Query", "host", {}), Call("Host", field, args)]


def assert_carries_spec(session: StandInSession, spec: StepSpec) -> None:
    """Check that the container query carries every part of the description."""
    calls = container_request(session).calls

    assert args_of(calls, "from", "address") == [(spec.image,)]
    assert args_of(calls, "withWorkdir", "path") == [(spec.workdir,)]
    assert args_of(calls, "withEnvVariable", "name", "value") == list(spec.env)

    volumes = [
        (
            cache.path,
            [Call("Query", "cacheVolume", {"key": CACHE_KEY_PREFIX + cache.key})],
        )
        for cache in spec.caches
    ]
    assert args_of(calls, "withMountedCache", "path", "cache") == volumes

    directories = args_of(calls, "withDirectory", "path", "source")
    if spec.source is None:
        assert directories == []
    else:
        excludes = dagger_excludes(spec.source.exclude)
        source = host_call(
            "directory", path=str(spec.source.host_path), exclude=excludes
        )
        assert directories == [(spec.source.path, source)]

    files = [
        (file.path, host_call("file", path=str(file.host_path))) for file in spec.files
    ]
    assert args_of(calls, "withFile", "path", "source") == files

    mounted = [path for (path,) in args_of(calls, "withMountedFile", "path")]
    assert mounted == [image.path for image in spec.images]

    setup = [call.args for call in calls if call.field == "withExec"]
    assert setup == [{"args": list(command)} for command in spec.setup]


def assert_runs_commands(session: StandInSession, spec: StepSpec) -> None:
    """Check that each command runs with expect: ANY and that its result is read."""
    for command in spec.commands:
        expected = Call(
            "Container", "withExec", {"args": list(command), "expect": "ANY"}
        )
        reads = {
            request.leaf.field
            for request in session.requests
            if find_calls(request.calls, "withExec")[-1:] == [expected]
        }
        assert {"exitCode", "stdout", "stderr"} <= reads, command


def assert_exports_outputs(
    session: StandInSession, spec: StepSpec, reports_dir: Path
) -> None:
    exported = [
        (request.calls[-2].args["path"], request.leaf.args["path"])
        for request in session.requests
        if request.leaf.field == "export" and request.calls[-2].field == "file"
    ]
    assert exported == [
        (path, str(reports_dir / Path(path).name)) for path in spec.outputs
    ]


def assert_valid(session: StandInSession) -> None:
    assert session.requests, "no query was sent"
    assert session.validation_errors() == []


async def test_lint_queries(
    dagger_session: StandInSession,
    dagger_backend: DaggerBackend,
    prepared: Prepared,
    scripted_engine: ScriptedEngine,
    golden: Golden,
) -> None:
    finding = "./app.py:1:1: F401 'os' imported but unused\n"
    scripted_engine.files[lint_step.REPORT] = finding
    scripted_engine.stdout["flake8"] = finding
    scripted_engine.exit_codes["flake8"] = 1
    spec = lint_step.describe(prepared.context)

    result = await lint_step.run(prepared.context, dagger_backend, noop)

    assert_valid(dagger_session)
    assert_carries_spec(dagger_session, spec)
    assert_runs_commands(dagger_session, spec)
    assert_exports_outputs(dagger_session, spec, prepared.context.reports_dir)
    assert result.status is Status.FAILED
    assert result.summary == "1 finding"
    assert prepared.context.reports_dir / "flake8.txt" in result.reports
    golden("lint.graphql", dagger_session.transcript())


async def test_test_queries(
    dagger_session: StandInSession,
    dagger_backend: DaggerBackend,
    prepared: Prepared,
    scripted_engine: ScriptedEngine,
    golden: Golden,
) -> None:
    scripted_engine.files[test_step.REPORT] = JUNIT
    spec = test_step.describe(prepared.context)

    result = await test_step.run(prepared.context, dagger_backend, noop)

    assert_valid(dagger_session)
    assert_carries_spec(dagger_session, spec)
    assert_runs_commands(dagger_session, spec)
    assert_exports_outputs(dagger_session, spec, prepared.context.reports_dir)
    assert result.status is Status.PASSED
    assert result.summary == "1 passed"
    golden("test.graphql", dagger_session.transcript())


def build_request(session: StandInSession) -> Request:
    builds = [r for r in session.requests if find_calls(r.calls, "dockerBuild")]
    assert builds, "no query built the image"
    return builds[0]


async def test_build_queries(
    dagger_session: StandInSession,
    dagger_backend: DaggerBackend,
    prepared: Prepared,
    golden: Golden,
) -> None:
    spec = build_step.describe(prepared.context)
    ca = (prepared.project.path / "ca.pem").read_text()

    result = await build_step.run(prepared.context, dagger_backend, noop)

    assert_valid(dagger_session)
    calls = build_request(dagger_session).calls
    [docker_build] = find_calls(calls, "dockerBuild")
    assert calls[:2] == host_call("directory", path=str(spec.context))
    assert docker_build.args.get("dockerfile", "Dockerfile") == "Dockerfile"
    assert docker_build.args["target"] == spec.target
    build_args = [{"name": key, "value": value} for key, value in spec.build_args]
    assert docker_build.args["buildArgs"] == build_args
    ca_secret = [Call("Query", "setSecret", {"name": "ca", "plaintext": ca})]
    assert docker_build.args["secrets"] == [ca_secret]
    assert args_of(calls, "withLabel", "name", "value") == list(spec.labels)
    assert result.status is Status.PASSED
    assert set(dagger_backend.images) == set(spec.tags)
    golden("build.graphql", dagger_session.transcript())


async def test_build_secret_only_in_set_secret(
    dagger_session: StandInSession, dagger_backend: DaggerBackend, prepared: Prepared
) -> None:
    ca = (prepared.project.path / "ca.pem").read_text()

    await build_step.run(prepared.context, dagger_backend, noop)

    holders = [
        call.field
        for request in dagger_session.requests
        for call in request.calls
        if ca in repr(call.args) and call.field != "setSecret"
    ]
    assert holders == []


async def test_scan_queries(
    dagger_session: StandInSession,
    dagger_backend: DaggerBackend,
    prepared: Prepared,
    scripted_engine: ScriptedEngine,
    golden: Golden,
) -> None:
    scripted_engine.files[scan_step.IMAGE_REPORT] = '{"Results": []}'
    scripted_engine.files[scan_step.SOURCE_REPORT] = '{"Results": []}'
    await build_step.run(prepared.context, dagger_backend, noop)
    dagger_session.requests.clear()
    image = prepared.context.image
    assert image is not None
    spec = scan_step.describe(prepared.context, image)

    result = await scan_step.run(prepared.context, dagger_backend, noop)

    assert_valid(dagger_session)
    assert_carries_spec(dagger_session, spec)
    assert_runs_commands(dagger_session, spec)
    assert_exports_outputs(dagger_session, spec, prepared.context.reports_dir)
    [mounted] = find_calls(container_request(dagger_session).calls, "withMountedFile")
    tarball = mounted.args["source"]
    assert find_calls(tarball, "dockerBuild"), "the scan does not read the built image"
    assert tarball[-1].field == "asTarball"
    assert result.status is Status.PASSED, result.summary
    golden("scan.graphql", dagger_session.transcript())


def secret_spec(key: Path) -> StepSpec:
    return StepSpec(
        name="deploy",
        image="python:3.11-slim",
        commands=(("sh", "-c", 'test -n "$API_TOKEN"'),),
        secrets=(
            SecretMount(SecretRef("token", "env://SAMPLE_API_TOKEN"), env="API_TOKEN"),
            SecretMount(SecretRef("key", f"file://{key}"), path="/run/secrets/key"),
        ),
    )


async def test_secrets_passed_as_secrets(
    dagger_session: StandInSession,
    dagger_backend: DaggerBackend,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    golden: Golden,
) -> None:
    monkeypatch.setenv("SAMPLE_API_TOKEN", TEST_TOKEN)
    key = tmp_path / "deploy.key"
    key.write_text(TEST_KEY)

    result = await dagger_backend.run(secret_spec(key), tmp_path / "reports", noop)

    assert_valid(dagger_session)
    calls = container_request(dagger_session).calls
    token = [Call("Query", "setSecret", {"name": "token", "plaintext": TEST_TOKEN})]
    assert args_of(calls, "withSecretVariable", "name", "secret") == [
        ("API_TOKEN", token)
    ]
    key_secret = [Call("Query", "setSecret", {"name": "key", "plaintext": TEST_KEY})]
    mounted = args_of(calls, "withMountedSecret", "path", "source")
    assert mounted == [("/run/secrets/key", key_secret)]
    assert args_of(calls, "withEnvVariable", "name", "value") == []
    assert result.results[0].exit_code == 0
    golden("secrets.graphql", dagger_session.transcript())


async def test_secret_values_masked_in_transcript(
    dagger_session: StandInSession,
    dagger_backend: DaggerBackend,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("SAMPLE_API_TOKEN", TEST_TOKEN)
    key = tmp_path / "deploy.key"
    key.write_text(TEST_KEY)

    await dagger_backend.run(secret_spec(key), tmp_path / "reports", noop)

    transcript = dagger_session.transcript()
    assert TEST_TOKEN not in transcript
    assert TEST_KEY not in transcript
