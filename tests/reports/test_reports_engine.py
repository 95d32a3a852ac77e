"""The real CLI on copies of the example writes every report, and every
report agrees with the severity gate."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import docker
import jsonschema
import pytest

from conftest import EXAMPLE, RunCli, git_init
from test_faults import plant_flake8_error, plant_github_token, plant_vulnerable_dependency

from .schemas import sarif_validator

__all__ = ["sarif_validator"]  # a fixture, imported for pytest to find

pytestmark = pytest.mark.engine

PROJECT = "examples/bridge-service"
REPORT_FILES = (
    "junit.xml",
    "pipeline.sarif",
    "gl-code-quality-report.json",
    "gl-container-scanning-report.json",
    "summary.md",
    "run.json",
)
# run_cli reads output in text mode, which turns the marker's "\r" into "\n".
SECTION_START = re.compile(r"\x1b\[0Ksection_start:\d+:pipeline_(\w+)(\[collapsed=true\])?\n")


def remove_healthcheck(root: Path) -> None:
    """Drop the HEALTHCHECK, which Trivy reports as DS-0026 at LOW severity."""
    dockerfile = root / "Dockerfile"
    text = dockerfile.read_text()
    text = re.sub(r"HEALTHCHECK [^\n]*\\\n[^\n]*\n", "", text)
    assert "HEALTHCHECK" not in text
    dockerfile.write_text(text)


def load(path: Path) -> Any:
    return json.loads(path.read_text())


def sarif_results(log: dict[str, Any]) -> list[dict[str, Any]]:
    return [result for run in log["runs"] for result in run["results"]]


def test_github_run_reports_agree(
    engine: docker.DockerClient,
    tmp_path: Path,
    run_cli: RunCli,
    sarif_validator: jsonschema.protocols.Validator,
) -> None:
    repository = tmp_path / "repository"
    project = repository / PROJECT
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns(".pipeline", "__pycache__"))
    plant_flake8_error(project)
    plant_github_token(project)
    plant_vulnerable_dependency(project)
    remove_healthcheck(project)
    token = re.search(r"ghp_\w+", (project / "bridge_service" / "credentials.py").read_text())
    assert token is not None
    git_init(repository)
    step_summary = tmp_path / "step-summary.md"
    env = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_STEP_SUMMARY": str(step_summary),
        "GITHUB_WORKSPACE": str(repository),
    }

    result = run_cli("ci", str(project), env=env)

    assert result.returncode == 1, result.output
    reports = project / ".pipeline" / "reports"
    for name in REPORT_FILES:
        assert (reports / name).is_file(), name
        assert token[0] not in (reports / name).read_text(), name
    assert token[0] not in result.output
    record = load(reports / "run.json")
    assert set(record["reports"]) == {"junit", "sarif", "codequality", "container_scanning", "summary"}
    for path in record["reports"].values():
        assert Path(path).is_file(), path
    steps = {step["name"]: step for step in record["steps"]}
    assert {name: step["status"] for name, step in steps.items()} == {
        "lint": "failed", "test": "passed", "build": "passed", "scan": "failed",
    }
    for step in steps.values():
        assert step["duration"] > 0
        assert step["started"]
        assert step["image"]
    assert steps["scan"]["findings"]["CRITICAL"] >= 3
    assert steps["scan"]["findings"]["LOW"] == 2
    image_id = steps["build"]["details"]["image_id"]
    assert record["image"]["id"] == image_id
    assert engine.images.get(image_id).id == image_id
    assert record["image"]["tags"] == steps["build"]["details"]["tags"]
    blocking = [f for step in record["steps"] for f in step["findings_list"] if f["blocking"]]
    ignored = [f for step in record["steps"] for f in step["findings_list"] if not f["blocking"]]
    assert {f["rule"] for f in ignored} == {"DS-0026"}

    # SARIF: valid, placed from the repository root, errors only where the gate blocks.
    sarif = load(reports / "pipeline.sarif")
    assert [error.message for error in sarif_validator.iter_errors(sarif)] == []
    results = sarif_results(sarif)
    assert len(results) == len(blocking) + len(ignored)
    for sarif_result in results:
        assert (sarif_result["level"] == "error") is sarif_result["properties"]["blocking"]
        uri = sarif_result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        assert uri.startswith(f"{PROJECT}/"), uri
    levels = {(r["ruleId"], r["level"]) for r in results}
    assert ("F401", "error") in levels
    assert ("github-pat", "error") in levels
    assert ("CVE-2020-14343", "error") in levels
    assert ("DS-0026", "note") in levels

    # GitLab formats, written whichever CI runs.
    quality = load(reports / "gl-code-quality-report.json")
    assert [issue["location"] for issue in quality] == [
        {"path": f"{PROJECT}/bridge_service/api.py", "lines": {"begin": 1}}
    ]
    scanning = load(reports / "gl-container-scanning-report.json")
    assert scanning["scan"]["type"] == "container_scanning"
    cves = {v["identifiers"][0]["value"]: v for v in scanning["vulnerabilities"]}
    assert cves["CVE-2020-14343"]["severity"] == "Critical"
    assert cves["CVE-2020-14343"]["location"]["image"] == steps["build"]["details"]["tags"][0]

    # Annotations on stdout: one error per blocking finding, none for DS-0026.
    annotations = [line for line in result.stdout.splitlines() if line.startswith("::")]
    errors = [line for line in annotations if line.startswith("::error ")]
    assert len(errors) == len(blocking)
    assert (
        f"::error file={PROJECT}/bridge_service/api.py,line=1,col=1,title=flake8 F401::"
        "'os' imported but unused"
    ) in errors
    assert any(
        line.startswith(f"::error file={PROJECT}/bridge_service/credentials.py,line=1,")
        for line in errors
    )
    ds0026 = [line for line in annotations if "DS-0026" in line]
    assert len(ds0026) == 2
    assert all(line.startswith("::notice ") for line in ds0026)

    summary = (reports / "summary.md").read_text()
    assert summary.startswith("## pipeline: failed")
    assert "### lint: blocking findings" in summary
    assert "DS-0026" not in summary
    assert step_summary.read_text() == summary + "\n"


def test_gitlab_run_ignored_findings(
    engine: docker.DockerClient, example_copy: Path, run_cli: RunCli
) -> None:
    # zlib's CVE-2023-45853 (CRITICAL, no fix in Debian 12) is kept by
    # ignore_unfixed = false and is below a gate of LOW only.
    env = {
        "GITLAB_CI": "true",
        "PIPELINE_SCAN__IGNORE_UNFIXED": "false",
        "PIPELINE_SCAN__SEVERITY": "LOW",
    }

    result = run_cli("ci", str(example_copy), "--json", env=env)

    assert result.returncode == 0, result.output
    record = result.record()
    assert record["status"] == "passed"
    sections = SECTION_START.findall(result.stderr)
    assert sections == [("lint", "[collapsed=true]"), ("test", "[collapsed=true]"),
                        ("build", "[collapsed=true]"), ("scan", "[collapsed=true]")]
    assert result.stderr.count("\x1b[0Ksection_end:") == 4
    assert "CVE-2023-45853 [CRITICAL]" in result.stderr
    assert "::error" not in result.output

    reports = example_copy / ".pipeline" / "reports"
    scanning = load(reports / "gl-container-scanning-report.json")
    zlib = [v for v in scanning["vulnerabilities"] if v["identifiers"][0]["value"] == "CVE-2023-45853"]
    assert len(zlib) == 1
    assert zlib[0]["severity"] == "Critical"
    sarif = load(reports / "pipeline.sarif")
    trivy = next(run for run in sarif["runs"] if run["tool"]["driver"]["name"] == "Trivy")
    rule = next(r for r in trivy["tool"]["driver"]["rules"] if r["id"] == "CVE-2023-45853")
    assert float(rule["properties"]["security-severity"]) < 7.0
    assert all(r["level"] != "error" for r in sarif_results(sarif))
    assert "blocking findings" not in (reports / "summary.md").read_text()
