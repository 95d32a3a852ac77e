"""The example service passes all four steps on the real engine."""

from __future__ import annotations

import json
from pathlib import Path

import docker
import pytest

from conftest import RunCli, run_resources

pytestmark = pytest.mark.engine


def test_example_passes_ci(engine: docker.DockerClient, example_copy: Path, run_cli: RunCli) -> None:
    result = run_cli("ci", str(example_copy), "--json")

    assert result.returncode == 0, result.output
    record = result.record()
    assert record["status"] == "passed"
    statuses = {step["name"]: step["status"] for step in record["steps"]}
    assert statuses == {"lint": "passed", "test": "passed", "build": "passed", "scan": "passed"}
    assert run_resources(engine, result.run_id) == []


def test_example_reports_written(engine: docker.DockerClient, example_copy: Path, run_cli: RunCli) -> None:
    result = run_cli("ci", str(example_copy), "--json")
    reports = example_copy / ".pipeline" / "reports"

    assert result.returncode == 0, result.output
    for name in ("flake8.txt", "junit.xml", "trivy-image.json", "trivy-source.json", "run.json"):
        assert (reports / name).is_file(), name
    on_disk = json.loads((reports / "run.json").read_text())
    assert on_disk["run_id"] == result.record()["run_id"]
    test_step = result.step("test")
    assert test_step["details"]["counts"]["tests"] >= 8
    assert test_step["details"]["counts"]["failures"] == 0


def test_example_image_labelled(engine: docker.DockerClient, example_copy: Path, run_cli: RunCli) -> None:
    result = run_cli("build", str(example_copy), "--json")

    assert result.returncode == 0, result.output
    build = result.step("build")
    image = engine.images.get(build["details"]["image_id"])
    labels = image.labels
    assert labels["org.opencontainers.image.revision"].startswith("src-")
    assert labels["org.opencontainers.image.version"] == labels["org.opencontainers.image.revision"]
    assert "org.opencontainers.image.created" in labels
    assert set(build["details"]["tags"]) <= set(image.tags)
    assert image.attrs["Config"]["User"] not in ("", "root", "0")


def test_git_tags_and_labels(engine: docker.DockerClient, example_copy: Path, run_cli: RunCli) -> None:
    from conftest import git_init
    import subprocess

    git_init(example_copy)
    subprocess.run(["git", "tag", "v1.4.0"], cwd=example_copy, check=True)
    subprocess.run(
        ["git", "remote", "add", "origin", "https://user:token123@example.invalid/acme/bridge.git"],
        cwd=example_copy,
        check=True,
    )
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=example_copy, check=True, capture_output=True, text=True
    ).stdout.strip()

    result = run_cli("build", str(example_copy), "--json")

    assert result.returncode == 0, result.output
    tags = result.step("build")["details"]["tags"]
    assert f"bridge-service:{commit}" in tags
    assert f"bridge-service:{commit[:12]}" in tags
    assert "bridge-service:v1.4.0" in tags
    labels = engine.images.get(tags[0]).labels
    assert labels["org.opencontainers.image.revision"] == commit
    assert labels["org.opencontainers.image.version"] == "v1.4.0"
    assert labels["org.opencontainers.image.source"] == "https://example.invalid/acme/bridge.git"
