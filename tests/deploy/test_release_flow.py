"""The release manager's path, end to end, through the real `pipeline` command:
tag v1.0.0 and `pipeline release` it to staging, promote that digest to prod
(which needs an approval), release v1.1.0, then roll staging back.

Everything is real: the swarm, the registry with a password, the reverse
proxy, and a sample service built in the test.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from swarm_support import free_port, remove_service_resources, request_text

from conftest import CliResult, ProjectFactory, RunCli, git_init, skip_or_fail

pytest_plugins = ["swarm_fixtures"]
pytestmark = pytest.mark.engine

AUTH_REGISTRY = "127.0.0.1:5001"
AUTH_USER = "pipeline"
AUTH_PASSWORD_FILE = Path("/etc/rgbridge-pipeline/registry-auth.password")
PASSWORD_VARIABLE = "RGB_RELEASE_TEST_PASSWORD"

APP = '''\
"""A tiny HTTP service that reports the version baked into its image."""

import pathlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = pathlib.Path(__file__).with_name("VERSION").read_text().strip()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        healthy = VERSION != "broken"
        body = b"ok" if self.path == "/health" else f"version {VERSION}".encode()
        self.send_response(200 if healthy or self.path != "/health" else 500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
'''
TEST = '''\
import pathlib


def test_version_is_set():
    assert pathlib.Path(__file__).parent.parent.joinpath("VERSION").read_text().strip()
'''
DOCKERFILE = '''\
FROM python:3.11-slim
WORKDIR /app
COPY app.py VERSION ./
USER 10001:10001
HEALTHCHECK CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health')"]
CMD ["python", "app.py"]
'''


def settings(repository: str, name: str, staging_port: int, prod_port: int) -> str:
    registry = (
        f'registry = {{ repository = "{repository}", username = "{AUTH_USER}", '
        f'password = "env://{PASSWORD_VARIABLE}" }}'
    )
    timing = "update_delay = 0.5, monitor = 2, timeout = 120"
    return f"""\
[scan]
ignore_unfixed = true

[environments.staging]
{registry}
target = {{ kind = "swarm", publish = "proxy", published_port = {staging_port}, service = "{name}-staging", {timing} }}
replicas = 2
url = "http://127.0.0.1:{staging_port}"
release_tags = ["v*"]

[environments.prod]
{registry}
target = {{ kind = "swarm", publish = "proxy", published_port = {prod_port}, service = "{name}-prod", {timing} }}
replicas = 1
url = "http://127.0.0.1:{prod_port}"
approval = true
"""


@pytest.fixture(scope="module")
def registry_password() -> str:
    try:
        return AUTH_PASSWORD_FILE.read_text().strip()
    except OSError as exc:
        skip_or_fail(f"cannot read {AUTH_PASSWORD_FILE} ({exc.strerror}); run scripts/setup as root")
        raise AssertionError("unreachable") from None


@pytest.fixture
def service_name(swarm_engine: docker.DockerClient) -> Iterator[str]:
    name = f"rgb-rel-{uuid.uuid4().hex[:8]}"
    yield name
    for environment in ("staging", "prod"):
        remove_service_resources(swarm_engine, f"{name}-{environment}")


def git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=Release Tests", "-c", "user.email=release@example.invalid", *args],
        cwd=root,
        check=True,
        capture_output=True,
    )


def audit(root: Path) -> list[dict[str, object]]:
    path = root / ".pipeline" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def outcome(result: CliResult) -> dict[str, object]:
    assert result.returncode == 0, result.output
    document: dict[str, object] = json.loads(result.stdout)
    return document


def test_release_promote_and_rollback(
    project_factory: ProjectFactory,
    run_cli: RunCli,
    swarm_engine: docker.DockerClient,
    registry_password: str,
    service_name: str,
) -> None:
    staging_port, prod_port = free_port(), free_port()
    repository = f"{AUTH_REGISTRY}/rgb-release/{service_name}"
    root = project_factory(
        {
            "app.py": APP,
            "VERSION": "1.0.0\n",
            "requirements.txt": "",
            "tests/test_version.py": TEST,
            "Dockerfile": DOCKERFILE,
            "pipeline.toml": settings(repository, service_name, staging_port, prod_port),
            ".gitignore": ".pipeline/\n",
            ".flake8": "[flake8]\nmax-line-length = 120\n",
            "unused.py": "import os\n",
        }
    )
    git_init(root)
    env = {PASSWORD_VARIABLE: registry_password, "PIPELINE_ACTOR": "release-manager"}

    # A release whose lint fails pushes and deploys nothing.
    git(root, "tag", "v0.9.0")
    failed = run_cli("release", "--engine", "docker", "--json", str(root), env=env, timeout=900)
    assert failed.returncode == 1, failed.output
    failed_run = json.loads(failed.stdout)["run"]
    failed_steps = {step["name"]: step["status"] for step in failed_run["steps"]}
    assert failed_steps["lint"] == "failed"
    assert failed_steps["publish"] == "skipped"
    assert not swarm_engine.services.list(filters={"name": f"{service_name}-staging"})
    assert audit(root) == []

    (root / "unused.py").unlink()
    git(root, "commit", "-qam", "remove the unused import")
    git(root, "tag", "v1.0.0")
    first_commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, check=True, capture_output=True, text=True
    ).stdout.strip()
    staging_url = f"http://127.0.0.1:{staging_port}"
    prod_url = f"http://127.0.0.1:{prod_port}"

    # v1.0.0 goes to staging.
    first = run_cli("release", "--engine", "docker", "--json", str(root), env=env, timeout=900)
    document = outcome(first)
    deploy = document["deploy"]
    assert isinstance(deploy, dict)
    staging_v1 = str(deploy["image"])
    assert staging_v1.startswith(f"{repository}@sha256:")
    assert deploy["environment"] == "staging"
    assert request_text(staging_url) == "version 1.0.0"
    run = document["run"]
    assert isinstance(run, dict)
    statuses = {step["name"]: step["status"] for step in run["steps"]}
    assert statuses == dict.fromkeys(["lint", "test", "build", "scan", "publish"], "passed")
    assert registry_password not in first.output

    # Production takes the digest that staging runs, and only with an approval.
    refused = run_cli(
        "promote", "--from", "staging", "--to", "prod", "-C", str(root),
        env={**env, "PIPELINE_APPROVED_BY": ""},
    )
    assert refused.returncode == 2, refused.output
    assert "needs an approval" in refused.stderr
    assert not swarm_engine.services.list(filters={"name": f"{service_name}-prod"})
    promoted = outcome(
        run_cli(
            "promote", "--from", "staging", "--to", "prod", "--approved-by", "alice",
            "-C", str(root), "--json", env=env,
        )
    )
    assert promoted["image"] == staging_v1
    assert request_text(prod_url) == "version 1.0.0"

    # v1.1.0 replaces it on staging, and a rollback restores v1.0.0.
    (root / "VERSION").write_text("1.1.0\n")
    git(root, "commit", "-qam", "1.1.0")
    git(root, "tag", "v1.1.0")
    second = outcome(run_cli("release", "--engine", "docker", "--json", str(root), env=env, timeout=900))
    second_deploy = second["deploy"]
    assert isinstance(second_deploy, dict)
    assert second_deploy["previous"] == staging_v1
    assert second_deploy["image"] != staging_v1
    assert request_text(staging_url) == "version 1.1.0"

    rolled_back = outcome(run_cli("rollback", "--env", "staging", "-C", str(root), "--json", env=env))
    assert rolled_back["image"] == staging_v1
    assert request_text(staging_url) == "version 1.0.0"
    assert request_text(prod_url) == "version 1.0.0"

    # A release whose health check fails is rolled back, and v1.0.0 serves on.
    (root / "VERSION").write_text("broken\n")
    git(root, "commit", "-qam", "broken")
    git(root, "tag", "v1.2.0")
    broken = run_cli("release", "--engine", "docker", str(root), env=env, timeout=900)
    assert broken.returncode == 1, broken.output
    assert "Swarm rolled it back" in broken.stderr
    assert request_text(staging_url) == "version 1.0.0"

    lines = audit(root)
    summary = [(line["action"], line["environment"], line["result"]) for line in lines]
    assert summary == [
        ("publish", "staging", "succeeded"),
        ("deploy", "staging", "succeeded"),
        ("promote", "prod", "refused"),
        ("promote", "prod", "succeeded"),
        ("publish", "staging", "succeeded"),
        ("deploy", "staging", "succeeded"),
        ("rollback", "staging", "succeeded"),
        ("publish", "staging", "succeeded"),
        ("deploy", "staging", "rolled_back"),
    ]
    assert lines[8]["previous"] == staging_v1
    assert all(line["actor"] == "release-manager" for line in lines)
    assert lines[3]["approval"] == "alice"
    assert lines[3]["image"] == staging_v1
    assert set(lines[0]["tags"]) == {first_commit, "1.0.0", "1.0", "1", "latest"}  # type: ignore[arg-type]
    assert lines[6]["previous"] == second_deploy["image"]
    trail = (root / ".pipeline" / "audit.jsonl").read_text()
    assert registry_password not in trail
