"""Fixtures: sample projects built from a dict of files, the real CLI, and
the real Docker Engine with the local registry that scripts/setup starts."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

# Helper modules whose asserts should report their values like a test's do.
pytest.register_assert_rewrite("wrapper_checks")

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = REPO_ROOT / "examples" / "bridge-service"


def _pipeline_script() -> Path:
    """Find the `pipeline` script of the Python that runs the tests.

    pip puts it next to the interpreter in a virtualenv or the official Python
    images. Debian's python3 is /usr/bin/python3, but its pip puts scripts in
    /usr/local/bin, so the script is then looked up on PATH.
    """
    beside = Path(sys.executable).parent / "pipeline"
    if beside.is_file():
        return beside
    found = shutil.which("pipeline")
    return Path(found) if found else beside


PIPELINE = _pipeline_script()
RUN_LABEL = "io.rgbridge.pipeline.run"
REGISTRY = os.environ.get("PIPELINE_TEST_REGISTRY", "127.0.0.1:5000")
TRIVY_DB = f"{REGISTRY}/trivy-db:2"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def skip_or_fail(reason: str) -> None:
    """Skip locally, but fail under CI=true, where nothing may go unchecked."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: missing test infrastructure fails the run)")
    pytest.skip(reason)


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def record(self) -> dict[str, Any]:
        return json.loads(self.stdout)

    @property
    def run_id(self) -> str:
        return str(self.record()["run_id"])

    def step(self, name: str) -> dict[str, Any]:
        for step in self.record()["steps"]:
            if step["name"] == name:
                return step
        raise AssertionError(f"step {name} not in the run record: {self.stdout}")


@pytest.fixture(scope="session")
def user_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user config that points the scan at the local vulnerability DB.

    Tests never read the developer's own ~/.config, so they run the same
    everywhere.
    """
    path = tmp_path_factory.mktemp("user-config") / "config.toml"
    docker_cli = os.environ.get("PIPELINE_DOCKER_CLI", "/usr/bin/docker")
    path.write_text(
        f'docker_cli = "{docker_cli}"\n[scan]\ndb_repository = "{TRIVY_DB}"\n'
    )
    return path


@pytest.fixture
def cli_env(user_config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env["PIPELINE_USER_CONFIG"] = str(user_config)
    env.pop("GITHUB_ACTIONS", None)
    env.pop("GITLAB_CI", None)
    return env


RunCli = Callable[..., CliResult]


@pytest.fixture
def run_cli(cli_env: dict[str, str]) -> RunCli:
    """Run the real `pipeline` command; extra variables go in ``env``."""

    def run(*args: str, env: Mapping[str, str] | None = None, timeout: float = 600) -> CliResult:
        completed = subprocess.run(
            [str(PIPELINE), *args],
            capture_output=True,
            text=True,
            env={**cli_env, **(env or {})},
            timeout=timeout,
        )
        return CliResult(completed.returncode, completed.stdout, completed.stderr)

    return run


ProjectFactory = Callable[..., Path]


@pytest.fixture(autouse=True)
def remove_project_caches(tmp_path: Path) -> Iterator[None]:
    """Remove the per-project cache volumes of the test's sample projects.

    The pipeline keys them by project path, and every test's projects live
    under its own tmp_path, so without this each test would leave volumes.
    """
    yield
    try:
        client = docker.from_env()
        volumes = client.volumes.list(filters={"label": "io.rgbridge.pipeline.cache"})
    except docker.errors.DockerException:
        return
    wanted = set()
    for folder in [tmp_path, *tmp_path.rglob("*")]:
        if folder.is_dir():
            digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
            wanted.add(f"rgbridge-pipeline-cache-project-{digest}")
    for volume in volumes:
        if volume.name in wanted:
            try:
                volume.remove(force=True)
            except docker.errors.APIError:
                pass  # still in use by a container that is being removed
    client.close()


@pytest.fixture
def project_factory(tmp_path: Path) -> ProjectFactory:
    """Write a sample project from a dict of relative paths to contents."""
    counter = iter(range(1000))

    def make(files: Mapping[str, str], name: str | None = None, git: bool = False) -> Path:
        root = tmp_path / (name or f"project{next(counter)}")
        for relative, content in files.items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        root.mkdir(parents=True, exist_ok=True)
        if git:
            git_init(root)
        return root

    return make


def git_init(root: Path) -> None:
    if shutil.which("git") is None:
        skip_or_fail("git is not installed; the test needs it to create a repository")
    commands = [
        ["git", "init", "-q", "-b", "main"],
        ["git", "add", "-A"],
        [
            "git", "-c", "user.name=Pipeline Tests", "-c",
            "user.email=tests@example.invalid", "commit", "-q", "-m", "sample",
        ],
    ]
    for command in commands:
        subprocess.run(command, cwd=root, check=True, capture_output=True)


@pytest.fixture
def example_copy(tmp_path: Path) -> Path:
    """A private copy of the example service, without earlier reports."""
    target = tmp_path / "bridge-service"
    shutil.copytree(
        EXAMPLE,
        target,
        ignore=shutil.ignore_patterns(".pipeline", "__pycache__", ".pytest_cache"),
    )
    return target


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        skip_or_fail(f"no Docker Engine answers ({exc}); run scripts/setup")
        raise AssertionError("unreachable")
    yield client
    client.close()


def _registry_has(repository: str, tag: str) -> bool:
    request = urllib.request.Request(
        f"http://{REGISTRY}/v2/{repository}/manifests/{tag}",
        method="HEAD",
        headers={
            "Accept": "application/vnd.oci.image.manifest.v1+json, "
            "application/vnd.docker.distribution.manifest.v2+json"
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="session")
def engine(docker_client: docker.DockerClient) -> docker.DockerClient:
    """The engine plus what scripts/setup provides: base image and vuln DB."""
    if not _registry_has("library/python", "3.11-slim"):
        skip_or_fail(f"python:3.11-slim is not in the registry at {REGISTRY}; run scripts/setup")
    if not _registry_has("trivy-db", "2"):
        skip_or_fail(f"the Trivy database {TRIVY_DB} is missing; run scripts/setup")
    return docker_client


def run_resources(client: docker.DockerClient, run_id: str | None = None) -> list[str]:
    """Names of the containers and volumes of one run, or of any run.

    Tests pass the run ID, so that runs of other processes on the same engine
    do not count.
    """
    label = RUN_LABEL if run_id is None else f"{RUN_LABEL}={run_id}"
    containers = client.containers.list(all=True, filters={"label": label})
    volumes = client.volumes.list(filters={"label": label})
    return [c.name for c in containers] + [v.name for v in volumes]
