"""A project's own trivy.yaml cannot change the options the scan sets."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest

from conftest import RunCli, run_resources
from test_faults import plant_github_token

pytestmark = pytest.mark.engine

# Would hide the planted token from both scans, if Trivy read it.
HIDING_CONFIG = "scan:\n  skip-dirs:\n    - bridge_service\n    - /app/bridge_service\n"


def test_project_trivy_yaml_ignored(
    engine: docker.DockerClient, example_copy: Path, run_cli: RunCli
) -> None:
    cause = plant_github_token(example_copy)
    (example_copy / "trivy.yaml").write_text(HIDING_CONFIG)

    result = run_cli("scan", str(example_copy), "--json")

    assert result.returncode == 1, result.output
    assert result.step("scan")["status"] == "failed"
    rules = [finding["rule"] for finding in result.step("scan")["findings_list"]]
    assert "github-pat" in rules
    assert cause.split(":")[0].replace("\\", "") in result.stderr
    assert run_resources(engine, result.run_id) == []
