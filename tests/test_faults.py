"""Copies of the example with one planted fault fail the right step, and
the output names the cause."""

from __future__ import annotations

import re
import secrets
import string
from pathlib import Path

import docker
import pytest

from conftest import RunCli, run_resources

pytestmark = pytest.mark.engine


def random_github_token() -> str:
    # Trivy skips well-known example keys, so the token must be random.
    alphabet = string.ascii_letters + string.digits
    return "ghp_" + "".join(secrets.choice(alphabet) for _ in range(36))


def plant_flake8_error(root: Path) -> str:
    api = root / "bridge_service" / "api.py"
    lines = api.read_text().splitlines()
    lines.insert(0, "import os")  # unused import: F401 on line 1
    api.write_text("\n".join(lines) + "\n")
    return r"bridge_service/api\.py:1:1: F401"


def plant_failing_test(root: Path) -> str:
    (root / "tests" / "test_planted.py").write_text(
        "def test_planted_failure():\n    assert 1 + 1 == 3\n"
    )
    return r"tests/test_planted\.py::test_planted_failure"


def plant_broken_dockerfile(root: Path) -> str:
    dockerfile = root / "Dockerfile"
    text = dockerfile.read_text().replace(
        "COPY requirements.txt .", "COPY requirements.txt .\nRUN exit 3", 1
    )
    dockerfile.write_text(text)
    return r"Dockerfile:\d+: build-error RUN exit 3"


def plant_github_token(root: Path) -> str:
    (root / "bridge_service" / "credentials.py").write_text(
        f'GITHUB_TOKEN = "{random_github_token()}"  # noqa: S105\n'
    )
    return r"bridge_service/credentials\.py:1: github-pat \[CRITICAL\]"


def plant_vulnerable_dependency(root: Path) -> str:
    requirements = root / "requirements.txt"
    requirements.write_text(requirements.read_text() + "PyYAML==5.3.1\n")
    return r"CVE-2020-14343 \[CRITICAL\] (?i:pyyaml) 5\.3\.1"


FAULTS = [
    pytest.param(plant_flake8_error, "lint", id="flake8-error"),
    pytest.param(plant_failing_test, "test", id="failing-test"),
    pytest.param(plant_broken_dockerfile, "build", id="broken-dockerfile"),
    pytest.param(plant_github_token, "scan", id="github-token"),
    pytest.param(plant_vulnerable_dependency, "scan", id="vulnerable-pyyaml"),
]


@pytest.mark.parametrize(("plant", "failing_step"), FAULTS)
def test_fault_fails_step(
    engine: docker.DockerClient,
    example_copy: Path,
    run_cli: RunCli,
    plant: object,
    failing_step: str,
) -> None:
    cause = plant(example_copy)  # type: ignore[operator]

    result = run_cli("ci", str(example_copy), "--json")

    assert result.returncode == 1, result.output
    statuses = {step["name"]: step["status"] for step in result.record()["steps"]}
    assert statuses[failing_step] == "failed"
    others = {name: status for name, status in statuses.items() if name != failing_step}
    expected_others = {
        name: ("skipped" if failing_step == "build" and name == "scan" else "passed")
        for name in others
    }
    assert others == expected_others
    assert re.search(cause, result.stderr), result.stderr
    assert run_resources(engine, result.run_id) == []
