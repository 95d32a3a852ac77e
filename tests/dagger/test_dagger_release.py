"""The module's publish and release functions, invoked as the engine calls them.

A stand-in session responds to every query. It copies exported directories,
returns the scripted reports of the steps, a digest for each push, and the
scripted output of the deploy container. Every query is validated against
the engine's schema.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dagger.mod._exceptions import FunctionError
from dagger_fixtures import call_function, source_id
from dagger_standin import Call, CopyingEngine, Request, ScriptedEngine, StandInSession, find_calls

from pipeline.backends import dagger_release
from pipeline.steps import lint as lint_step
from pipeline.steps import scan as scan_step
from pipeline.steps import test as test_step

pytest_plugins = ["dagger_fixtures"]
pytestmark = pytest.mark.anyio

REPO_ROOT = Path(__file__).resolve().parents[2]
Golden = Callable[[str, str], None]
COMMIT = "9b2e4c1d7a" * 4
REPOSITORY = "registry.example.test/team/sample-service"
OTHER_REPOSITORY = "registry.example.test/other/sample"
JUNIT = (
    '<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="1" '
    'failures="0" errors="0" skipped="0"></testsuite></testsuites>'
)
ENVIRONMENTS = f"""
[environments.staging]
release_tags = ["v*"]
secrets = {{ APP_TOKEN = "env://APP_TOKEN", DB_KEY = "file:///run/keys/db" }}

[environments.staging.registry]
repository = "{REPOSITORY}"
username = "ci"
password = "env://REGISTRY_PASSWORD"

[environments.staging.target]
kind = "swarm"

[environments.prod]
approval = true
release_tags = ["prod-*"]

[environments.prod.registry]
repository = "{REPOSITORY}"
username = "env://REGISTRY_USER"
password = "env://REGISTRY_PASSWORD"

[environments.prod.target]
kind = "kubernetes"
kubeconfig = "deploy/kubeconfig"
"""
DEPLOY_OUTCOME = {
    "action": "deploy",
    "environment": "staging",
    "status": "deployed",
    "image": "",
    "previous": None,
    "detail": "",
}


@pytest.fixture
def copying_engine() -> CopyingEngine:
    engine = CopyingEngine()
    engine.files[lint_step.REPORT] = ""
    engine.files[test_step.REPORT] = JUNIT
    engine.files[scan_step.IMAGE_REPORT] = '{"Results": []}'
    engine.files[scan_step.SOURCE_REPORT] = '{"Results": []}'
    engine.files[scan_step.SBOM_REPORT] = '{"bomFormat": "CycloneDX", "metadata": {}}'
    reference = f"{REPOSITORY}@{engine.push_digest}"
    engine.stdout["pipeline deploy"] = json.dumps(dict(DEPLOY_OUTCOME, image=reference))
    engine.stderr["pipeline deploy"] = f"deploy: staging now runs {reference}\n"
    return engine


@pytest.fixture
def scripted_engine(copying_engine: CopyingEngine) -> ScriptedEngine:
    return copying_engine


@pytest.fixture
def release_project(sample_project: Path) -> Path:
    settings = sample_project / "pipeline.toml"
    settings.write_text(settings.read_text() + ENVIRONMENTS)
    return sample_project


@pytest.fixture
def module_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    global_session: StandInSession,
    release_project: Path,
) -> Path:
    """Give the module's work folder a fixed name, so that queries repeat."""
    folder = tmp_path / "module-tmp"
    folder.mkdir()
    runs = iter(range(100))

    def mkdtemp(prefix: str = "tmp") -> str:
        path = folder / f"{prefix}{next(runs)}"
        path.mkdir()
        return str(path)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    global_session.replacements.update(
        {str(folder): "<module-tmp>", str(release_project): "<project>", str(REPO_ROOT): "<repo>"}
    )
    return folder


async def secret_id(uri: str) -> str:
    from dagger import dag

    return await dag.secret(uri).id()


async def socket_id(path: str) -> str:
    from dagger import dag

    return await dag.host().unix_socket(path).id()


async def publish_args(**changes: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "commit": COMMIT,
        "environment": "staging",
        "password": await secret_id("env://REGISTRY_PASSWORD"),
    }
    args.update(changes)
    return args


async def release_args(**changes: Any) -> dict[str, Any]:
    from dagger import dag

    args: dict[str, Any] = {
        "tag": "v1.4.0",
        "commit": COMMIT,
        "tool_source": await dag.host().directory(str(REPO_ROOT)).id(),
        "password": await secret_id("env://REGISTRY_PASSWORD"),
        "secrets": [await secret_id("env://APP_TOKEN"), await secret_id("file:///run/keys/db")],
        "docker_socket": await socket_id("/var/run/docker.sock"),
        "actor": "release-manager",
    }
    args.update(changes)
    return args


def publishes(session: StandInSession) -> list[Request]:
    return [request for request in session.requests if request.leaf.field == "publish"]


def deploy_requests(session: StandInSession) -> list[Request]:
    """Return the requests that read the deploy container's results."""
    found = []
    for request in session.requests:
        execs = find_calls(request.calls, "withExec")
        if execs and execs[-1].args["args"][:2] == ["pipeline", "deploy"]:
            found.append(request)
    return found


def builds_started(session: StandInSession) -> list[Request]:
    return [request for request in session.requests if find_calls(request.calls, "dockerBuild")]


def from_first_push(session: StandInSession) -> str:
    """Print the requests from the first push on: the publish and the deploy."""
    first = next(i for i, r in enumerate(session.requests) if r.leaf.field == "publish")
    parts = [
        f"# request {number}\n{session.printed(request)}\n"
        for number, request in enumerate(session.requests[first:], start=first + 1)
    ]
    return "\n".join(parts)


def args_of(calls: list[Call], field: str, *names: str) -> list[tuple[Any, ...]]:
    return [tuple(call.args.get(name) for name in names) for call in find_calls(calls, field)]


# -- publish ----------------------------------------------------------------


async def test_publish_returns_digest_reference(
    module_class: Any,
    global_session: StandInSession,
    release_project: Path,
    copying_engine: CopyingEngine,
    module_run: Path,
    golden: Golden,
) -> None:
    source = await source_id(global_session, release_project)

    reference = await call_function(module_class, "publish", source, await publish_args())

    assert reference == f"{REPOSITORY}@{copying_engine.push_digest}"
    assert global_session.validation_errors() == []
    assert copying_engine.pushed == [f"{REPOSITORY}:{COMMIT}"]
    golden("module-publish.graphql", from_first_push(global_session))


async def test_publish_uses_password_secret(
    module_class: Any, global_session: StandInSession, release_project: Path, module_run: Path
) -> None:
    source = await source_id(global_session, release_project)

    await call_function(module_class, "publish", source, await publish_args())

    [push] = publishes(global_session)
    [auth] = find_calls(push.calls, "withRegistryAuth")
    assert auth.args["username"] == "ci"
    assert auth.args["address"] == REPOSITORY
    assert auth.args["secret"] == [Call("Query", "secret", {"uri": "env://REGISTRY_PASSWORD"})]


async def test_publish_pushes_scanned_image(
    module_class: Any, global_session: StandInSession, release_project: Path, module_run: Path
) -> None:
    source = await source_id(global_session, release_project)

    await call_function(module_class, "publish", source, await publish_args())

    requests = global_session.requests
    [push] = publishes(global_session)
    scans = [
        number
        for number, request in enumerate(requests)
        for call in find_calls(request.calls, "withExec")
        if call.args["args"][1:2] == ["image"] and "--input" in call.args["args"]
    ]
    assert scans, "no Trivy image scan ran"
    assert max(scans) < requests.index(push), "the push does not follow the scan"
    labels = dict(args_of(push.calls, "withLabel", "name", "value"))
    assert labels["org.opencontainers.image.revision"] == COMMIT
    sbom_commands = [
        call
        for request in global_session.requests
        for call in find_calls(request.calls, "withExec")
        if "cyclonedx" in call.args["args"]
    ]
    assert sbom_commands, "the scan wrote no SBOM for the published image"


async def test_publish_release_tag_tags(
    module_class: Any,
    global_session: StandInSession,
    release_project: Path,
    copying_engine: CopyingEngine,
    module_run: Path,
) -> None:
    source = await source_id(global_session, release_project)

    await call_function(module_class, "publish", source, await publish_args(tag="v1.4.0"))

    tags = [address.rsplit(":", 1)[1] for address in copying_engine.pushed]
    assert tags == [COMMIT, "1.4.0", "1.4", "1", "latest"]


async def test_publish_to_address(
    module_class: Any,
    global_session: StandInSession,
    release_project: Path,
    copying_engine: CopyingEngine,
    module_run: Path,
) -> None:
    source = await source_id(global_session, release_project)
    args = await publish_args(environment="", address=OTHER_REPOSITORY, username="robot")

    reference = await call_function(module_class, "publish", source, args)

    assert reference == f"{OTHER_REPOSITORY}@{copying_engine.push_digest}"
    [push] = publishes(global_session)
    [auth] = find_calls(push.calls, "withRegistryAuth")
    assert auth.args["username"] == "robot"
    assert auth.args["secret"] == [Call("Query", "secret", {"uri": "env://REGISTRY_PASSWORD"})]


async def test_publish_username_replaces_setting(
    module_class: Any, global_session: StandInSession, release_project: Path, module_run: Path
) -> None:
    source = await source_id(global_session, release_project)

    await call_function(module_class, "publish", source, await publish_args(username="robot"))

    [push] = publishes(global_session)
    [auth] = find_calls(push.calls, "withRegistryAuth")
    assert auth.args["username"] == "robot"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"commit": ""}, "invalid commit ''"),
        ({"commit": "9b2e4c1"}, "full commit hash"),
        ({"environment": ""}, "either --environment or --address"),
        ({"address": OTHER_REPOSITORY}, "either --environment or --address"),
        ({"environment": "qa"}, "unknown environment 'qa'"),
        ({"password": None}, "pass --password=env://REGISTRY_PASSWORD"),
        ({"environment": "prod"}, "registry user of environment 'prod' is env://REGISTRY_USER"),
        ({"environment": "", "address": "Registry.Example.Test/App"}, "lowercase"),
        ({"environment": "", "address": "127.0.0.1:5000/sample", "username": "ci"}, "is on loopback"),
        (
            {"environment": "", "address": OTHER_REPOSITORY, "username": "robot", "password": None},
            "--username is given without --password",
        ),
    ],
)
async def test_publish_rejects_input_first(
    module_class: Any,
    global_session: StandInSession,
    release_project: Path,
    copying_engine: CopyingEngine,
    module_run: Path,
    changes: dict[str, Any],
    message: str,
) -> None:
    source = await source_id(global_session, release_project)
    args = await publish_args(**changes)

    with pytest.raises(FunctionError, match=message):
        await call_function(module_class, "publish", source, args)

    assert builds_started(global_session) == []
    assert copying_engine.pushed == []


async def test_publish_failed_scan_pushes_nothing(
    module_class: Any,
    global_session: StandInSession,
    release_project: Path,
    copying_engine: CopyingEngine,
    module_run: Path,
) -> None:
    finding = {
        "Results": [
            {
                "Target": "sample-service",
                "Vulnerabilities": [
                    {
                        "VulnerabilityID": "CVE-2024-0001",
                        "PkgName": "openssl",
                        "InstalledVersion": "3.0.0",
                        "FixedVersion": "3.0.1",
                        "Severity": "CRITICAL",
                        "Title": "a critical flaw",
                    }
                ],
            }
        ]
    }
    copying_engine.files[scan_step.IMAGE_REPORT] = json.dumps(finding)
    source = await source_id(global_session, release_project)

    with pytest.raises(FunctionError, match="failed: scan"):
        await call_function(module_class, "publish", source, await publish_args())

    assert copying_engine.pushed == []


async def test_publish_failure_names_tags(
    module_class: Any,
    global_session: StandInSession,
    release_project: Path,
    copying_engine: CopyingEngine,
    module_run: Path,
) -> None:
    copying_engine.push_errors[":1.4"] = ["dial tcp: connect: connection refused"]
    source = await source_id(global_session, release_project)

    with pytest.raises(FunctionError, match=f"tags that point at {copying_engine.push_digest} now: {COMMIT}, 1.4.0"):
        await call_function(module_class, "publish", source, await publish_args(tag="v1.4.0"))


# -- release ----------------------------------------------------------------


async def test_release_deploys_published_digest(
    module_class: Any,
    global_session: StandInSession,
    release_project: Path,
    copying_engine: CopyingEngine,
    module_run: Path,
    golden: Golden,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A fixed run ID, which the deploy container carries to bypass the cache.
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(int=0x5EED))
    source = await source_id(global_session, release_project)
    reference = f"{REPOSITORY}@{copying_engine.push_digest}"

    summary = await call_function(module_class, "release", source, await release_args())

    assert global_session.validation_errors() == []
    assert f"published {reference}" in summary
    assert f"deploy: staging deployed {reference}" in summary
    [tag_push, *_] = copying_engine.pushed
    assert tag_push == f"{REPOSITORY}:{COMMIT}"
    [command] = {tuple(find_calls(r.calls, "withExec")[-1].args["args"]) for r in deploy_requests(global_session)}
    assert list(command) == [
        "pipeline", "deploy", "--env", "staging",
        "--project", dagger_release.PROJECT_PATH, "--json", reference,
    ]
    golden("module-release.graphql", from_first_push(global_session))


async def test_release_runs_ci_first(
    module_class: Any,
    global_session: StandInSession,
    release_project: Path,
    copying_engine: CopyingEngine,
    module_run: Path,
) -> None:
    copying_engine.files[lint_step.REPORT] = "./app.py:1:1: F401 'os' imported but unused\n"
    copying_engine.exit_codes["flake8"] = 1
    source = await source_id(global_session, release_project)

    with pytest.raises(FunctionError, match="failed: lint"):
        await call_function(module_class, "release", source, await release_args())

    assert copying_engine.pushed == []
    assert deploy_requests(global_session) == []


async def test_release_deploy_container_inputs(
    module_class: Any, global_session: StandInSession, release_project: Path, module_run: Path
) -> None:
    source = await source_id(global_session, release_project)

    await call_function(module_class, "release", source, await release_args())

    calls = deploy_requests(global_session)[0].calls
    user = dagger_release.TOOL_USER
    socket = [Call("Query", "host", {}), Call("Host", "unixSocket", {"path": "/var/run/docker.sock"})]
    assert args_of(calls, "withUnixSocket", "path", "source", "owner") == [
        ("/var/run/docker.sock", socket, user)
    ]
    env = dict(args_of(calls, "withEnvVariable", "name", "value"))
    assert env["DOCKER_HOST"] == "unix:///var/run/docker.sock"
    assert env["PIPELINE_ACTOR"] == "release-manager"
    assert env[dagger_release.DEPLOY_ID_ENV]
    secret_variables = args_of(calls, "withSecretVariable", "name", "secret")
    assert secret_variables == [
        ("APP_TOKEN", [Call("Query", "secret", {"uri": "env://APP_TOKEN"})]),
        ("REGISTRY_PASSWORD", [Call("Query", "secret", {"uri": "env://REGISTRY_PASSWORD"})]),
    ]
    assert args_of(calls, "withMountedSecret", "path", "source", "owner") == [
        ("/run/keys/db", [Call("Query", "secret", {"uri": "file:///run/keys/db"})], user)
    ]
    [project] = args_of(calls, "withDirectory", "path", "source", "owner")
    assert project[0] == dagger_release.PROJECT_PATH
    assert project[1][-1] == Call("Host", "directory", {"path": str(release_project)})
    assert project[2] == user
    [tool] = find_calls(calls, "dockerBuild")
    assert tool.args == {}
    assert find_calls(calls, "directory")[0].args["path"] == str(REPO_ROOT)


async def test_release_deploy_never_cached(
    module_class: Any, global_session: StandInSession, release_project: Path, module_run: Path
) -> None:
    ids = []
    for _ in range(2):
        source = await source_id(global_session, release_project)
        await call_function(module_class, "release", source, await release_args())
        calls = deploy_requests(global_session)[-1].calls
        env = dict(args_of(calls, "withEnvVariable", "name", "value"))
        ids.append(env[dagger_release.DEPLOY_ID_ENV])

    assert ids[0] != ids[1]


async def test_release_kubernetes_kubeconfig(
    module_class: Any,
    global_session: StandInSession,
    release_project: Path,
    copying_engine: CopyingEngine,
    module_run: Path,
) -> None:
    source = await source_id(global_session, release_project)
    args = await release_args(
        tag="prod-2026",
        docker_socket=None,
        kubeconfig=await secret_id("file:///home/ci/.kube/config"),
        username="robot",
        approved_by="lead",
    )

    await call_function(module_class, "release", source, args)

    calls = deploy_requests(global_session)[0].calls
    kubeconfig = f"{dagger_release.PROJECT_PATH}/deploy/kubeconfig"
    mounted = args_of(calls, "withMountedSecret", "path", "source")
    assert (kubeconfig, [Call("Query", "secret", {"uri": "file:///home/ci/.kube/config"})]) in mounted
    env = dict(args_of(calls, "withEnvVariable", "name", "value"))
    assert env["KUBECONFIG"] == kubeconfig
    assert env["REGISTRY_USER"] == "robot"
    assert "DOCKER_HOST" not in env
    assert find_calls(calls, "withUnixSocket") == []
    [build] = find_calls(calls, "dockerBuild")
    assert build.args["buildArgs"] == [{"name": "EXTRAS", "value": "kubernetes"}]
    command = find_calls(calls, "withExec")[-1].args["args"]
    assert command[command.index("--approved-by") + 1] == "lead"
    assert command[command.index("--env") + 1] == "prod"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tag": ""}, "release needs the git tag"),
        ({"tag": "1.4.0"}, "no environment releases tag '1.4.0'"),
        ({"commit": "HEAD"}, "invalid commit 'HEAD'"),
        ({"docker_socket": None}, r"--docker-socket=/var/run/docker.sock"),
        ({"secrets": []}, "env://APP_TOKEN, file:///run/keys/db"),
        ({"password": None}, "pass --password=env://REGISTRY_PASSWORD"),
        ({"tag": "prod-1", "username": "robot", "docker_socket": None}, "--kubeconfig"),
        (
            {"tag": "prod-1", "username": "robot", "kubeconfig": "", "docker_socket": None},
            "--kubeconfig",
        ),
    ],
)
async def test_release_rejects_input_first(
    module_class: Any,
    global_session: StandInSession,
    release_project: Path,
    copying_engine: CopyingEngine,
    module_run: Path,
    changes: dict[str, Any],
    message: str,
) -> None:
    source = await source_id(global_session, release_project)
    args = await release_args(**changes)
    if args.get("kubeconfig") == "":
        del args["kubeconfig"]

    with pytest.raises(FunctionError, match=message):
        await call_function(module_class, "release", source, args)

    assert builds_started(global_session) == []
    assert copying_engine.pushed == []


async def test_release_needs_approval_first(
    module_class: Any,
    global_session: StandInSession,
    release_project: Path,
    copying_engine: CopyingEngine,
    module_run: Path,
) -> None:
    source = await source_id(global_session, release_project)
    args = await release_args(
        tag="prod-1",
        username="robot",
        docker_socket=None,
        kubeconfig=await secret_id("file:///home/ci/.kube/config"),
    )

    with pytest.raises(FunctionError, match="'prod' needs an approval"):
        await call_function(module_class, "release", source, args)

    assert builds_started(global_session) == []
    assert copying_engine.pushed == []


async def test_release_deploy_failure_named(
    module_class: Any,
    global_session: StandInSession,
    release_project: Path,
    copying_engine: CopyingEngine,
    module_run: Path,
) -> None:
    copying_engine.exit_codes["pipeline deploy"] = 1
    copying_engine.stderr["pipeline deploy"] = "Error: the service did not converge; rolled back\n"
    source = await source_id(global_session, release_project)
    reference = f"{REPOSITORY}@{copying_engine.push_digest}"

    with pytest.raises(FunctionError) as failure:
        await call_function(module_class, "release", source, await release_args())

    message = str(failure.value)
    assert f"published {reference}, but the deploy to staging failed with exit code 1" in message
    assert "rolled back" in message


async def test_release_queries_carry_no_secret_values(
    module_class: Any, global_session: StandInSession, release_project: Path, module_run: Path
) -> None:
    source = await source_id(global_session, release_project)

    await call_function(module_class, "release", source, await release_args())

    named = {
        call.args["name"]
        for request in global_session.requests
        for call in find_calls(request.calls, "setSecret")
    }
    # Only the sample project's CA bundle is a value the module reads itself.
    assert named <= {"ca"}
    uris = {
        call.args["uri"]
        for request in global_session.requests
        for call in find_calls(request.calls, "secret")
    }
    assert uris == {"env://REGISTRY_PASSWORD", "env://APP_TOKEN", "file:///run/keys/db"}


async def test_release_publish_failure_stops_deploy(
    module_class: Any,
    global_session: StandInSession,
    release_project: Path,
    copying_engine: CopyingEngine,
    module_run: Path,
) -> None:
    copying_engine.push_errors[f":{COMMIT}"] = ["failed to authorize: 401 Unauthorized"]
    source = await source_id(global_session, release_project)

    with pytest.raises(FunctionError, match="publish failed, so nothing was deployed") as failure:
        await call_function(module_class, "release", source, await release_args())

    assert "rejected user 'ci'" in str(failure.value)
    assert deploy_requests(global_session) == []


# -- audit trail ------------------------------------------------------------


async def test_publish_audit_line_logged(
    module_class: Any,
    global_session: StandInSession,
    release_project: Path,
    copying_engine: CopyingEngine,
    module_run: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = await source_id(global_session, release_project)

    args = await publish_args(actor="release-manager")

    reference = await call_function(module_class, "publish", source, args)

    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("audit: ")]
    [entry] = [json.loads(line.removeprefix("audit: ")) for line in lines]
    assert entry["action"] == "publish"
    assert entry["actor"] == "release-manager"
    assert entry["environment"] == "staging"
    assert entry["image"] == reference
    assert entry["result"] == "succeeded"
    assert entry["tags"] == [COMMIT]


async def test_failed_publish_audited(
    module_class: Any,
    global_session: StandInSession,
    release_project: Path,
    copying_engine: CopyingEngine,
    module_run: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    copying_engine.push_errors[":1"] = ["dial tcp: connect: connection refused"]
    source = await source_id(global_session, release_project)

    with pytest.raises(FunctionError):
        await call_function(module_class, "publish", source, await publish_args(tag="v1.4.0"))

    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("audit: ")]
    [entry] = [json.loads(line.removeprefix("audit: ")) for line in lines]
    assert entry["result"] == "failed"
    assert entry["tags"] == [COMMIT, "1.4.0", "1.4"]
