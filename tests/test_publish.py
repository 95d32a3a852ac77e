"""publish: tag policy, and pushes through the real CLI to the password-protected
registry that scripts/setup starts on 127.0.0.1:5001, with a loopback proxy in
front of it for transient and permanent registry failures."""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import docker
import pytest
import requests

from conftest import ProjectFactory, RunCli, git_init, skip_or_fail
from pipeline.errors import UsageError
from pipeline.project import GitInfo
from pipeline.backends.docker import DockerBackend
from pipeline.backends.docker_archive import COMPRESSION, prepare_image
from pipeline.backends.layer_cache import CompressedLayer, LayerCache
from pipeline.registry import base_url, split_repository
from pipeline.run import prepare
from pipeline.secrets import Redactor
from pipeline.spec import PublishOutput, PublishSpec, SecretRef
from pipeline.steps import publish, scan
from pipeline.steps.publish import image_tags, label_sbom
from registry_proxy import RESET, BreakAfter, FailAfter, FailFirst, registry_proxy

AUTH_REGISTRY = os.environ.get("PIPELINE_TEST_AUTH_REGISTRY", "127.0.0.1:5001")
AUTH_USER = os.environ.get("PIPELINE_TEST_AUTH_USER", "pipeline")
# Written by scripts/setup, readable by root only.
AUTH_PASSWORD_FILE = Path(
    os.environ.get(
        "PIPELINE_TEST_AUTH_PASSWORD_FILE", "/etc/rgbridge-pipeline/registry-auth.password"
    )
)
PASSWORD_VARIABLE = "RGB_PUBLISH_TEST_PASSWORD"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
MANIFEST_ACCEPT = (
    "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.oci.image.manifest.v1+json"
)

# A service with Flask, so the SBOM has a known Python package. It runs as a
# non-root user with a health check, so the scan passes.
SAMPLE = {
    "app.py": "import flask\n\napp = flask.Flask(__name__)\n",
    "Dockerfile": (
        "FROM python:3.11-slim\n"
        "RUN pip install --no-cache-dir flask==3.0.3\n"
        "COPY app.py /app/app.py\n"
        "USER 10001:10001\n"
        'HEALTHCHECK CMD ["python", "-c", "import flask"]\n'
        'CMD ["python", "/app/app.py"]\n'
    ),
    ".gitignore": ".pipeline/\n",
}


# -- tag policy ------------------------------------------------------------------


def _git(tag: str | None = None, dirty: bool = False) -> GitInfo:
    return GitInfo(COMMIT, tag, None, dirty)


@pytest.mark.parametrize(
    ("tag", "latest", "expected"),
    [
        (None, "release", [COMMIT]),
        (None, "always", [COMMIT, "latest"]),
        ("v1.4.0", "release", [COMMIT, "1.4.0", "1.4", "1", "latest"]),
        ("v1.4.0", "never", [COMMIT, "1.4.0", "1.4", "1"]),
        ("v0.10.2", "release", [COMMIT, "0.10.2", "0.10", "0", "latest"]),
        ("v1.4.0-rc.1", "release", [COMMIT, "1.4.0-rc.1"]),
        ("v1.4.0-rc.1", "always", [COMMIT, "1.4.0-rc.1", "latest"]),
        ("release-7", "release", [COMMIT]),
        ("1.4.0", "release", [COMMIT]),
        ("v01.4.0", "release", [COMMIT]),
    ],
)
def test_tag_policy(tag: str | None, latest: str, expected: list[str]) -> None:
    assert list(image_tags(_git(tag), latest, Path("/p"))) == expected


def test_tag_policy_rejects_dirty_tree() -> None:
    with pytest.raises(UsageError) as caught:
        image_tags(_git("v1.0.0", dirty=True), "release", Path("/p"))
    assert "uncommitted changes" in caught.value.message
    assert caught.value.hint is not None and "commit" in caught.value.hint


def test_tag_policy_rejects_no_git() -> None:
    with pytest.raises(UsageError) as caught:
        image_tags(None, "release", Path("/p"))
    assert "not a git repository" in caught.value.message


@pytest.mark.parametrize(
    ("repository", "host", "path"),
    [
        ("127.0.0.1:5001/team/app", "127.0.0.1:5001", "team/app"),
        ("localhost/app", "localhost", "app"),
        ("registry.example.com/app", "registry.example.com", "app"),
        ("app", "docker.io", "library/app"),
        ("team/app", "docker.io", "team/app"),
    ],
)
def test_split_repository(repository: str, host: str, path: str) -> None:
    assert split_repository(repository) == (host, path)


def test_base_url_schemes() -> None:
    assert base_url("127.0.0.1:5001", insecure=False) == "http://127.0.0.1:5001"
    assert base_url("localhost:5000", insecure=False) == "http://localhost:5000"
    assert base_url("[::1]:5000", insecure=False) == "http://[::1]:5000"
    assert base_url("registry.example.com", insecure=False) == "https://registry.example.com"
    assert base_url("registry.example.com", insecure=True) == "http://registry.example.com"
    assert base_url("docker.io", insecure=False) == "https://registry-1.docker.io"


def test_label_sbom_names_reference(tmp_path: Path) -> None:
    path = tmp_path / "sbom.cdx.json"
    path.write_text(json.dumps({"bomFormat": "CycloneDX", "metadata": {"component": {"name": "/work/image.tar"}}}))
    digest = "sha256:" + "ab" * 32
    label_sbom(path, PublishOutput(digest, f"127.0.0.1:5001/team/app@{digest}", ("x",)))

    component = json.loads(path.read_text())["metadata"]["component"]
    assert component["name"] == "127.0.0.1:5001/team/app"
    assert component["purl"] == (
        f"pkg:oci/app@sha256%3A{'ab' * 32}?repository_url=127.0.0.1%3A5001/team/app"
    )


def test_scan_writes_sbom_when_publishing(project_factory: ProjectFactory) -> None:
    project = project_factory(SAMPLE)
    write_config(project, f"{AUTH_REGISTRY}/rgb-publish/app")
    git_init(project)
    prepared = prepare(project)
    ctx = prepared.context
    without = scan.describe(ctx, "app:1")

    ctx.sbom = True
    spec = scan.describe(ctx, "app:1")

    assert scan.SBOM_REPORT not in without.outputs
    assert scan.SBOM_REPORT in spec.outputs
    sbom_commands = [command for command in spec.commands if "cyclonedx" in command]
    assert len(sbom_commands) == 1
    assert "--offline-scan" in sbom_commands[0]


def test_check_resolves_password(project_factory: ProjectFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    project = project_factory(SAMPLE)
    write_config(project, f"{AUTH_REGISTRY}/rgb-publish/app")
    git_init(project)
    prepared = prepare(project)
    prepared.context.environment = "dev"
    secret = "s3cret-" + uuid.uuid4().hex
    monkeypatch.setenv(PASSWORD_VARIABLE, secret)

    publish.check(prepared.context, prepared.redactor)

    assert prepared.context.sbom is True
    assert prepared.redactor(f"password {secret}") == "password ***"


def test_check_lists_environments(project_factory: ProjectFactory) -> None:
    project = project_factory(SAMPLE)
    write_config(project, f"{AUTH_REGISTRY}/rgb-publish/app")
    git_init(project)
    prepared = prepare(project)
    prepared.context.environment = "qa"

    with pytest.raises(UsageError) as caught:
        publish.check(prepared.context, prepared.redactor)

    assert caught.value.message == "unknown environment 'qa'; configured environments: dev, prod"


# -- the registry --------------------------------------------------------------


@pytest.fixture(scope="session")
def registry_password() -> str:
    """The password of the test registry, which scripts/setup generated."""
    try:
        password = AUTH_PASSWORD_FILE.read_text().strip()
    except OSError as exc:
        skip_or_fail(f"cannot read {AUTH_PASSWORD_FILE} ({exc.strerror}); run scripts/setup as root")
        raise AssertionError("unreachable")
    try:
        response = requests.get(f"http://{AUTH_REGISTRY}/v2/", auth=(AUTH_USER, password), timeout=5)
    except requests.RequestException as exc:
        skip_or_fail(f"no registry responds on {AUTH_REGISTRY} ({exc}); run scripts/setup")
        raise AssertionError("unreachable")
    if response.status_code != 200:
        skip_or_fail(f"the registry on {AUTH_REGISTRY} rejects {AUTH_PASSWORD_FILE}; run scripts/setup")
    return password


class Registry:
    """Queries of the test registry's API, with the right credentials."""

    def __init__(self, password: str) -> None:
        self.auth = (AUTH_USER, password)

    def tags(self, path: str) -> list[str]:
        """Return the repository's tags, [] when it does not exist."""
        response = requests.get(f"http://{AUTH_REGISTRY}/v2/{path}/tags/list", auth=self.auth, timeout=10)
        if response.status_code == 404:
            return []
        response.raise_for_status()
        return sorted(response.json().get("tags") or [])

    def digest(self, path: str, reference: str) -> str | None:
        response = requests.head(
            f"http://{AUTH_REGISTRY}/v2/{path}/manifests/{reference}",
            auth=self.auth,
            headers={"Accept": MANIFEST_ACCEPT},
            timeout=10,
        )
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.headers["Docker-Content-Digest"]

    def manifest(self, path: str, reference: str) -> dict[str, Any]:
        response = requests.get(
            f"http://{AUTH_REGISTRY}/v2/{path}/manifests/{reference}",
            auth=self.auth,
            headers={"Accept": MANIFEST_ACCEPT},
            timeout=10,
        )
        response.raise_for_status()
        manifest: dict[str, Any] = response.json()
        return manifest

    def has_blob(self, path: str, digest: str) -> bool:
        response = requests.head(f"http://{AUTH_REGISTRY}/v2/{path}/blobs/{digest}", auth=self.auth, timeout=10)
        return response.status_code == 200


@pytest.fixture
def registry(registry_password: str) -> Registry:
    return Registry(registry_password)


@pytest.fixture
def repository_path() -> str:
    """A repository of its own for each test, so that "nothing pushed" holds."""
    return f"rgb-publish/{uuid.uuid4().hex[:12]}"


def write_config(project: Path, repository: str, username: str = AUTH_USER, latest: str = "release") -> None:
    (project / "pipeline.toml").write_text(
        "[scan]\n"
        "ignore_unfixed = true\n"
        "source = false\n"
        "[publish]\n"
        f'latest = "{latest}"\n'
        "attempts = 4\n"
        "[environments.dev]\n"
        f'registry = {{ repository = "{repository}", username = "{username}", '
        f'password = "env://{PASSWORD_VARIABLE}" }}\n'
        'target = { kind = "swarm" }\n'
        "[environments.prod]\n"
        f'registry = {{ repository = "{repository}", username = "{username}", '
        f'password = "env://{PASSWORD_VARIABLE}" }}\n'
        'target = { kind = "swarm" }\n'
    )


def _git_run(project: Path, *args: str) -> str:
    completed = subprocess.run(
        ["git", *args], cwd=project, check=True, capture_output=True, text=True
    )
    return completed.stdout.strip()


def sample(
    project_factory: ProjectFactory, repository: str, tag: str | None = "v1.2.3", username: str = AUTH_USER
) -> Path:
    """Write the sample project with its settings, commit it and tag the commit."""
    project = project_factory(SAMPLE)
    write_config(project, repository, username=username)
    git_init(project)
    if tag:
        _git_run(project, "tag", tag)
    return project


def assert_no_secret(password: str, output: str, project: Path) -> None:
    """Check the CLI's output and every file of the run (reports, audit trail)."""
    assert password not in output
    state = project / ".pipeline"
    assert (state / "reports" / "run.json").is_file()
    for path in state.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.engine
def test_publish_pushes_tags_and_digest(
    engine: docker.DockerClient,
    project_factory: ProjectFactory,
    run_cli: RunCli,
    registry: Registry,
    registry_password: str,
    repository_path: str,
) -> None:
    repository = f"{AUTH_REGISTRY}/{repository_path}"
    project = sample(project_factory, repository)
    commit = _git_run(project, "rev-parse", "HEAD")

    result = run_cli(
        "publish", str(project), "--env", "dev", "--json",
        env={PASSWORD_VARIABLE: registry_password},
    )

    assert result.returncode == 0, result.output
    step = result.step("publish")
    digest = step["details"]["digest"]
    expected_tags = [commit, "1.2.3", "1.2", "1", "latest"]
    assert step["status"] == "passed"
    assert step["details"]["tags"] == expected_tags
    assert step["details"]["reference"] == f"{repository}@{digest}"
    assert result.record()["image"]["published"]["reference"] == f"{repository}@{digest}"
    on_disk = json.loads((project / ".pipeline" / "reports" / "run.json").read_text())
    assert on_disk["image"]["published"]["digest"] == digest
    summary = (project / ".pipeline" / "reports" / "summary.md").read_text()
    assert f"pushed as `{repository}@{digest}`" in summary
    assert registry.tags(repository_path) == sorted(expected_tags)
    for tag in expected_tags:
        assert registry.digest(repository_path, tag) == digest, tag
    assert registry.digest(repository_path, digest) == digest

    pulled = engine.images.pull(
        repository, tag=digest, auth_config={"username": AUTH_USER, "password": registry_password}
    )
    try:
        assert pulled.id == result.step("build")["details"]["image_id"]
        assert f"{repository}@{digest}" in pulled.attrs["RepoDigests"]
    finally:
        # Removes the pulled reference only; the build's tags keep the image.
        engine.images.remove(f"{repository}@{digest}")

    sbom_path = project / ".pipeline" / "reports" / "sbom.cdx.json"
    sbom = json.loads(sbom_path.read_text())
    assert sbom["bomFormat"] == "CycloneDX"
    names = {component.get("name", "").lower() for component in sbom.get("components", [])}
    assert "flask" in names
    assert sbom["metadata"]["component"]["name"] == repository
    assert str(sbom_path) in step["reports"]
    assert_no_secret(registry_password, result.output, project)


@pytest.mark.engine
def test_prepare_image_deterministic(engine: docker.DockerClient, tmp_path: Path) -> None:
    """The same image gives the same blobs and digest every time."""
    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        for name in ("a.txt", "b.txt"):
            source = tmp_path / name
            source.write_text(name * 1000)
            tar.add(source, arcname=name)
    version = uuid.uuid4().hex[:8]
    tag = f"rgb-publish-tiny:{version}"
    engine.api.import_image(src=str(rootfs), repository="rgb-publish-tiny", tag=version)
    try:
        digests = []
        for attempt in range(2):
            folder = tmp_path / f"prepared{attempt}"
            folder.mkdir()
            archive = folder / "image.tar"
            with archive.open("wb") as out:
                for chunk in engine.images.get(tag).save(named=False):
                    out.write(chunk)
            digests.append(prepare_image(archive, folder).digest)
    finally:
        engine.images.remove(tag)
    assert digests[0] == digests[1]
    assert digests[0].startswith("sha256:")


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe\x00garbage",
        b"",
        b"[1, 2]",
        b'{"version": 99, "layers": {}}',
        b'{"version": 1, "layers": []}',
        b'{"version": 1, "layers": {"k": {"digest": "sha256:xyz", "size": -1}}}',
    ],
)
def test_layer_cache_ignores_corrupt_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "cache" / "layer-digests.json"
    path.parent.mkdir()
    path.write_bytes(content)
    diff_id = "sha256:" + "a" * 64
    layer = CompressedLayer("sha256:" + "b" * 64, 1234)

    cache = LayerCache(path)
    assert cache.get(diff_id, COMPRESSION) is None
    cache.put(diff_id, COMPRESSION, layer)
    cache.save()

    assert json.loads(path.read_text())["version"] == 1
    assert LayerCache(path).get(diff_id, COMPRESSION) == layer
    assert LayerCache(path).get(diff_id, "gzip level=9") is None
    assert [entry.name for entry in path.parent.iterdir()] == [path.name]


def test_layer_cache_save_keeps_other_entries(tmp_path: Path) -> None:
    """Two publishes that save one after the other keep both their entries."""
    path = tmp_path / "layer-digests.json"
    first, second = LayerCache(path), LayerCache(path)
    first.put("sha256:" + "1" * 64, COMPRESSION, CompressedLayer("sha256:" + "a" * 64, 10))
    second.put("sha256:" + "2" * 64, COMPRESSION, CompressedLayer("sha256:" + "b" * 64, 20))
    first.save()
    second.save()

    reloaded = LayerCache(path)
    assert reloaded.get("sha256:" + "1" * 64, COMPRESSION) == CompressedLayer("sha256:" + "a" * 64, 10)
    assert reloaded.get("sha256:" + "2" * 64, COMPRESSION) == CompressedLayer("sha256:" + "b" * 64, 20)


@pytest.mark.engine
def test_prepare_image_cached_same_manifest(engine: docker.DockerClient, tmp_path: Path) -> None:
    """A layer taken from the cache gives the manifest bytes of a compressed one."""
    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        source = tmp_path / "a.txt"
        source.write_text("layer content " * 5000)
        tar.add(source, arcname="a.txt")
    version = uuid.uuid4().hex[:8]
    tag = f"rgb-publish-tiny:{version}"
    engine.api.import_image(src=str(rootfs), repository="rgb-publish-tiny", tag=version)
    cache = LayerCache(tmp_path / "cache" / "layer-digests.json")
    requested: list[str] = []

    def registry_has(digest: str) -> bool:
        requested.append(digest)
        return True

    try:
        prepared = []
        for attempt in range(2):
            folder = tmp_path / f"prepared{attempt}"
            folder.mkdir()
            archive = folder / "image.tar"
            with archive.open("wb") as out:
                for chunk in engine.images.get(tag).save(named=False):
                    out.write(chunk)
            prepared.append(prepare_image(archive, folder, cache=cache, registry_has=registry_has))
    finally:
        engine.images.remove(tag)
    cold, warm = prepared
    assert warm.manifest == cold.manifest
    assert cold.layers[0].path is not None
    assert warm.layers[0].path is None
    assert requested == [cold.layers[0].digest]


def _publish_image(image: str, repository: str, log_file: Path) -> PublishOutput:
    """Publish a local image with the Docker backend, as the publish step does."""
    redactor = Redactor()
    backend = DockerBackend(f"rgb-publish-{uuid.uuid4().hex[:12]}", redactor)
    spec = PublishSpec(
        name="publish",
        image=image,
        repository=repository,
        tags=("cached",),
        username=AUTH_USER,
        password=SecretRef("password", f"env://{PASSWORD_VARIABLE}"),
        log_file=log_file,
    )
    lines: list[str] = []
    try:
        return anyio.run(backend.publish, spec, lines.append)
    finally:
        anyio.run(backend.close)
        backend.client.close()


@pytest.mark.engine
def test_publish_warm_layer_cache_same_digest(
    engine: docker.DockerClient,
    registry: Registry,
    registry_password: str,
    repository_path: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same image published with a cold, then a warm layer cache gets one
    digest; a cached layer that the target repository lacks is compressed."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv(PASSWORD_VARIABLE, registry_password)
    cache_file = tmp_path / "xdg-cache" / "rgbridge-pipeline" / "layer-digests.json"
    image = "python:3.11-slim"
    # Pulled through dockerd's mirror, which scripts/setup fills.
    layer_count = len(engine.images.pull("python", tag="3.11-slim").attrs["RootFS"]["Layers"])
    repository = f"{AUTH_REGISTRY}/{repository_path}"

    cold = _publish_image(image, repository, tmp_path / "cold.log")
    cold_log = (tmp_path / "cold.log").read_text()
    assert cold_log.count("compressed layer sha256:") == layer_count
    assert "compression skipped" not in cold_log
    assert len(json.loads(cache_file.read_text())["layers"]) == layer_count

    warm = _publish_image(image, repository, tmp_path / "warm.log")
    warm_log = (tmp_path / "warm.log").read_text()
    assert warm.digest == cold.digest
    assert warm_log.count("compression skipped (layer cache)") == layer_count
    assert "compressed layer sha256:" not in warm_log
    assert registry.digest(repository_path, "cached") == cold.digest

    # Blobs belong to a repository, so a new one has none of the cached blobs.
    fresh_path = f"rgb-publish/{uuid.uuid4().hex[:12]}"
    fresh = _publish_image(image, f"{AUTH_REGISTRY}/{fresh_path}", tmp_path / "fresh.log")
    fresh_log = (tmp_path / "fresh.log").read_text()
    assert fresh.digest == cold.digest
    assert fresh_log.count("lacks the cached blob") == layer_count
    assert fresh_log.count("compressed layer sha256:") == layer_count
    assert "compression skipped" not in fresh_log
    assert registry.digest(fresh_path, "cached") == cold.digest
    for layer in registry.manifest(fresh_path, cold.digest)["layers"]:
        assert registry.has_blob(fresh_path, layer["digest"]), layer


@pytest.mark.engine
def test_publish_cli_skips_compression_second_time(
    project_factory: ProjectFactory,
    run_cli: RunCli,
    registry: Registry,
    registry_password: str,
    repository_path: str,
    tmp_path: Path,
) -> None:
    """Publishing a commit again compresses nothing and pushes the same layers.

    The config differs, because the build labels the image with its creation time.
    """
    repository = f"{AUTH_REGISTRY}/{repository_path}"
    project = sample(project_factory, repository)
    env = {PASSWORD_VARIABLE: registry_password, "XDG_CACHE_HOME": str(tmp_path / "xdg-cache")}
    publish_log = project / ".pipeline" / "reports" / "publish.log"

    cold = run_cli("publish", str(project), "--env", "dev", "--json", env=env)
    assert cold.returncode == 0, cold.output
    cold_log = publish_log.read_text()
    assert "compressed layer sha256:" in cold_log
    assert "compression skipped" not in cold_log

    warm = run_cli("publish", str(project), "--env", "dev", "--json", env=env)
    assert warm.returncode == 0, warm.output
    warm_log = publish_log.read_text()
    assert "compression skipped (layer cache)" in warm_log
    assert "compressed layer sha256:" not in warm_log
    cold_manifest = registry.manifest(repository_path, cold.step("publish")["details"]["digest"])
    warm_manifest = registry.manifest(repository_path, warm.step("publish")["details"]["digest"])
    assert warm_manifest["layers"] == cold_manifest["layers"]
    assert registry.digest(repository_path, "latest") == warm.step("publish")["details"]["digest"]


@pytest.mark.engine
@pytest.mark.parametrize("username", [AUTH_USER, "nobody"])
def test_publish_wrong_credentials(
    engine: docker.DockerClient,
    project_factory: ProjectFactory,
    run_cli: RunCli,
    registry: Registry,
    registry_password: str,
    repository_path: str,
    username: str,
) -> None:
    repository = f"{AUTH_REGISTRY}/{repository_path}"
    project = sample(project_factory, repository, username=username)
    wrong = "wrong-" + uuid.uuid4().hex
    password = wrong if username == AUTH_USER else registry_password

    result = run_cli(
        "publish", str(project), "--env", "dev", "--json", env={PASSWORD_VARIABLE: password}
    )

    assert result.returncode == 1, result.output
    step = result.step("publish")
    assert step["status"] == "failed"
    assert f"registry {AUTH_REGISTRY} rejected the credentials of user '{username}'" in step["summary"]
    assert f"env://{PASSWORD_VARIABLE}" in step["summary"]
    assert registry.tags(repository_path) == []
    assert_no_secret(password, result.output, project)


@pytest.mark.engine
def test_publish_unreachable_registry(
    engine: docker.DockerClient, project_factory: ProjectFactory, run_cli: RunCli, registry_password: str
) -> None:
    port = _free_port()
    project = sample(project_factory, f"127.0.0.1:{port}/rgb-publish/app")

    result = run_cli("publish", str(project), "--env", "dev", "--json", env={PASSWORD_VARIABLE: registry_password})

    assert result.returncode == 1, result.output
    summary = result.step("publish")["summary"]
    assert f"registry 127.0.0.1:{port} cannot be reached at http://127.0.0.1:{port}" in summary
    assert "check the host and port" in summary


@pytest.mark.engine
def test_publish_to_non_registry(
    engine: docker.DockerClient,
    project_factory: ProjectFactory,
    run_cli: RunCli,
    registry_password: str,
    tmp_path: Path,
) -> None:
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        project = sample(project_factory, f"127.0.0.1:{port}/rgb-publish/app")
        result = run_cli(
            "publish", str(project), "--env", "dev", "--json", env={PASSWORD_VARIABLE: registry_password}
        )
    finally:
        server.shutdown()
        server.server_close()

    assert result.returncode == 1, result.output
    summary = result.step("publish")["summary"]
    assert f"http://127.0.0.1:{port} is not a container registry: GET /v2/ returned HTTP 404" in summary


@pytest.mark.engine
def test_publish_unknown_environment(
    engine: docker.DockerClient,
    project_factory: ProjectFactory,
    run_cli: RunCli,
    registry: Registry,
    registry_password: str,
    repository_path: str,
) -> None:
    project = sample(project_factory, f"{AUTH_REGISTRY}/{repository_path}")

    result = run_cli("publish", str(project), "--env", "staging", env={PASSWORD_VARIABLE: registry_password})

    assert result.returncode == 2, result.output
    assert "unknown environment 'staging'; configured environments: dev, prod" in result.stderr
    assert "build: running" not in result.stderr
    assert registry.tags(repository_path) == []


@pytest.mark.engine
def test_publish_missing_password_variable(
    engine: docker.DockerClient, project_factory: ProjectFactory, run_cli: RunCli, repository_path: str
) -> None:
    project = sample(project_factory, f"{AUTH_REGISTRY}/{repository_path}")

    result = run_cli("publish", str(project), "--env", "dev")

    assert result.returncode == 2, result.output
    assert f"environment variable {PASSWORD_VARIABLE} is not set" in result.stderr
    assert "build: running" not in result.stderr


@pytest.mark.engine
def test_publish_rejects_dirty_tree(
    engine: docker.DockerClient,
    project_factory: ProjectFactory,
    run_cli: RunCli,
    registry: Registry,
    registry_password: str,
    repository_path: str,
) -> None:
    project = sample(project_factory, f"{AUTH_REGISTRY}/{repository_path}")
    (project / "app.py").write_text("print('changed')\n")

    result = run_cli("publish", str(project), "--env", "dev", env={PASSWORD_VARIABLE: registry_password})

    assert result.returncode == 2, result.output
    assert "has uncommitted changes" in result.stderr
    assert "commit or stash the changes" in result.stderr
    assert "build: running" not in result.stderr
    assert registry.tags(repository_path) == []


@pytest.mark.engine
def test_publish_rejects_non_git_project(
    engine: docker.DockerClient, project_factory: ProjectFactory, run_cli: RunCli, repository_path: str
) -> None:
    project = project_factory(SAMPLE)
    write_config(project, f"{AUTH_REGISTRY}/{repository_path}")

    result = run_cli("publish", str(project), "--env", "dev", env={PASSWORD_VARIABLE: "x"})

    assert result.returncode == 2, result.output
    assert "is not a git repository" in result.stderr


@pytest.fixture
def upstream() -> tuple[str, int]:
    host, _, port = AUTH_REGISTRY.partition(":")
    return host, int(port or 80)


@pytest.mark.engine
@pytest.mark.parametrize(
    ("method", "path_part", "failure"),
    [
        ("PUT", "/manifests/sha256:", 503),
        ("POST", "/blobs/uploads/", 503),
        ("PUT", "/manifests/sha256:", RESET),
    ],
)
def test_publish_retries_transient_errors(
    engine: docker.DockerClient,
    project_factory: ProjectFactory,
    run_cli: RunCli,
    registry: Registry,
    registry_password: str,
    repository_path: str,
    upstream: tuple[str, int],
    method: str,
    path_part: str,
    failure: int,
) -> None:
    rule = FailFirst(method, path_part, count=2, status=failure)
    with registry_proxy(upstream, rule) as (port, proxy_log):
        repository = f"127.0.0.1:{port}/{repository_path}"
        project = sample(project_factory, repository)
        # Wide enough that no log line wraps on stderr.
        env = {PASSWORD_VARIABLE: registry_password, "COLUMNS": "400"}
        result = run_cli("publish", str(project), "--env", "dev", "--json", env=env)

    assert result.returncode == 0, result.output
    statuses = [status for m, path, status in proxy_log.requests if m == method and path_part in path]
    assert statuses[:3] == [failure, failure, 201 if method == "PUT" else 202]
    log = (project / ".pipeline" / "reports" / "publish.log").read_text()
    reason = (
        "(HTTP 503 UNAVAILABLE: injected by the test proxy)"
        if failure == 503
        else "(ConnectionError: ('Connection aborted.', RemoteDisconnected("
    )
    assert log.count(reason) == 2
    for attempt in (2, 3):
        assert f"(attempt {attempt} of 4)" in log
        assert f"(attempt {attempt} of 4)" in result.stderr
    assert "(attempt 4 of 4)" not in log
    digest = result.step("publish")["details"]["digest"]
    assert registry.digest(repository_path, "1.2.3") == digest
    assert_no_secret(registry_password, result.output, project)


@pytest.mark.engine
def test_publish_failing_midway_lists_tags(
    engine: docker.DockerClient,
    project_factory: ProjectFactory,
    run_cli: RunCli,
    registry: Registry,
    registry_password: str,
    repository_path: str,
    upstream: tuple[str, int],
) -> None:
    # The manifest by digest and the first tag pass, then every manifest PUT fails.
    rule = FailAfter("PUT", "/manifests/", count=2, status=500)
    with registry_proxy(upstream, rule) as (port, _):
        repository = f"127.0.0.1:{port}/{repository_path}"
        project = sample(project_factory, repository)
        commit = _git_run(project, "rev-parse", "HEAD")
        result = run_cli(
            "publish", str(project), "--env", "dev", "--json", env={PASSWORD_VARIABLE: registry_password}
        )

    assert result.returncode == 1, result.output
    step = result.step("publish")
    digest = registry.digest(repository_path, commit)
    assert digest is not None
    assert step["details"]["existing_tags"] == [commit]
    assert "PUT manifest 1.2.3 failed after 4 attempts" in step["summary"]
    assert f"tags that point at {digest} now: {commit}; not pushed: 1.2.3, 1.2, 1, latest" in step["summary"]
    assert registry.tags(repository_path) == [commit]
    assert "published" not in result.record()["image"]


@pytest.mark.engine
def test_publish_broken_registry_says_unknown(
    engine: docker.DockerClient,
    project_factory: ProjectFactory,
    run_cli: RunCli,
    registry: Registry,
    registry_password: str,
    repository_path: str,
    upstream: tuple[str, int],
) -> None:
    # After the manifest by digest, every request fails, queries included.
    rule = BreakAfter("PUT", "/manifests/sha256:", status=500)
    with registry_proxy(upstream, rule) as (port, _):
        repository = f"127.0.0.1:{port}/{repository_path}"
        project = sample(project_factory, repository)
        commit = _git_run(project, "rev-parse", "HEAD")
        result = run_cli(
            "publish", str(project), "--env", "dev", "--json", env={PASSWORD_VARIABLE: registry_password}
        )

    assert result.returncode == 1, result.output
    summary = result.step("publish")["summary"]
    assert f"PUT manifest {commit} failed after 4 attempts" in summary
    assert "which tags exist is unknown, because the registry could not be queried" in summary
    assert registry.tags(repository_path) == []


# -- HTTPS -------------------------------------------------------------------------


def _openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)


@pytest.fixture
def tls_registry(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A registry with TLS on 127.0.0.1, under this machine's host name, whose
    certificate a new test CA signed. Yields ``host:port`` and the CA file.

    The host name must resolve to 127.0.0.1 and not be a name that the
    pipeline treats as loopback, because loopback registries use HTTP.
    """
    host = socket.gethostname()
    try:
        address = socket.gethostbyname(host)
    except OSError:
        address = ""
    if address != "127.0.0.1" or host in ("localhost", "127.0.0.1"):
        pytest.skip(f"the host name {host!r} does not resolve to 127.0.0.1, so no HTTPS registry can run")
    folder = tmp_path / "tls-registry"
    folder.mkdir()
    _openssl(
        folder, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
        "-out", "ca.pem", "-days", "1", "-subj", "/CN=rgb-publish test CA",
    )
    _openssl(
        folder, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
        "-out", "server.csr", "-subj", f"/CN={host}",
    )
    (folder / "san.cnf").write_text(f"subjectAltName=DNS:{host}\n")
    _openssl(
        folder, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "san.cnf",
    )
    port = _free_port()
    config = folder / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {folder / 'storage'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        f"  tls:\n    certificate: {folder / 'server.pem'}\n    key: {folder / 'server.key'}\n"
    )
    server = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(100):
            try:
                requests.get(f"https://{host}:{port}/v2/", verify=str(folder / "ca.pem"), timeout=2)
                break
            except requests.RequestException:
                time.sleep(0.2)
        else:
            raise AssertionError(f"the TLS registry on 127.0.0.1:{port} did not start")
        yield f"{host}:{port}", folder / "ca.pem"
    finally:
        server.terminate()
        server.wait(timeout=30)


def write_tls_config(project: Path, repository: str, ca_bundle: Path | None) -> None:
    lines = [f'ca_bundle = "{ca_bundle}"'] if ca_bundle is not None else []
    lines += [
        "[scan]",
        "ignore_unfixed = true",
        "source = false",
        "[environments.dev]",
        f'registry = {{ repository = "{repository}" }}',
        'target = { kind = "swarm" }',
    ]
    (project / "pipeline.toml").write_text("\n".join(lines) + "\n")


@pytest.mark.engine
def test_publish_https_trusts_ca_bundle(
    engine: docker.DockerClient,
    project_factory: ProjectFactory,
    run_cli: RunCli,
    tls_registry: tuple[str, Path],
    tmp_path: Path,
) -> None:
    address, ca = tls_registry
    # The host's bundle plus the test CA, so that pip in step containers
    # still reaches PyPI through this machine's proxy.
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(Path("/etc/ssl/certs/ca-certificates.crt").read_text() + ca.read_text())
    project = project_factory(SAMPLE)
    write_tls_config(project, f"{address}/rgb-publish/app", bundle)
    git_init(project)
    commit = _git_run(project, "rev-parse", "HEAD")

    result = run_cli("publish", str(project), "--env", "dev", "--json")

    assert result.returncode == 0, result.output
    digest = result.step("publish")["details"]["digest"]
    response = requests.head(
        f"https://{address}/v2/rgb-publish/app/manifests/{commit}",
        headers={"Accept": MANIFEST_ACCEPT},
        verify=str(ca),
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["Docker-Content-Digest"] == digest
    log = (project / ".pipeline" / "reports" / "publish.log").read_text()
    assert f"checking access to https://{address} as anonymous" in log


@pytest.mark.engine
def test_publish_https_unknown_ca(
    engine: docker.DockerClient,
    project_factory: ProjectFactory,
    run_cli: RunCli,
    tls_registry: tuple[str, Path],
) -> None:
    address, ca = tls_registry
    project = project_factory(SAMPLE)
    write_tls_config(project, f"{address}/rgb-publish/app", None)
    git_init(project)

    result = run_cli("publish", str(project), "--env", "dev", "--json")

    assert result.returncode == 1, result.output
    summary = result.step("publish")["summary"]
    assert f"TLS connection to https://{address} failed" in summary
    assert "CERTIFICATE_VERIFY_FAILED" in summary
    assert "trust the registry's certificate authority with ca_bundle" in summary
    catalog = requests.get(f"https://{address}/v2/_catalog", verify=str(ca), timeout=10)
    assert catalog.json()["repositories"] == []
