"""SARIF from the captured flake8 and Trivy output: valid against the SARIF
2.1.0 schema, with levels and scores that agree with the severity gate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest

from conftest import git_init
from pipeline.reports._common import RepositoryPaths
from pipeline.reports.sarif import build_sarif
from pipeline.results import Finding

from .captured import IMAGE, captured_record
from .schemas import sarif_validator

__all__ = ["sarif_validator"]  # a fixture, imported for pytest to find


def sarif_of(project: Path, gate: tuple[str, ...] = ("HIGH", "CRITICAL")) -> dict[str, Any]:
    record = captured_record(project, gate)
    log = build_sarif(record.results, RepositoryPaths.find(project, {}))
    assert log is not None
    return log


def run_of(log: dict[str, Any], tool: str) -> dict[str, Any]:
    return next(run for run in log["runs"] if run["tool"]["driver"]["name"] == tool)


def all_results(log: dict[str, Any]) -> list[dict[str, Any]]:
    return [result for run in log["runs"] for result in run["results"]]


@pytest.mark.parametrize("gate", [("HIGH", "CRITICAL"), ("LOW",), ()], ids=["default", "low", "none"])
def test_sarif_valid_against_schema(
    tmp_path: Path, sarif_validator: jsonschema.protocols.Validator, gate: tuple[str, ...]
) -> None:
    log = sarif_of(tmp_path / "project", gate)

    errors = [error.message for error in sarif_validator.iter_errors(log)]

    assert errors == []


def test_sarif_one_run_per_tool(tmp_path: Path) -> None:
    log = sarif_of(tmp_path / "project")

    tools = [run["tool"]["driver"]["name"] for run in log["runs"]]
    categories = [run["automationDetails"]["id"] for run in log["runs"]]
    assert tools == ["flake8", "Trivy"]
    # Outside a repository, the category names the project folder.
    assert categories == ["pipeline/flake8/project/", "pipeline/trivy/project/"]


def test_sarif_category_at_repository_root(tmp_path: Path) -> None:
    project = tmp_path / "project"
    captured_record(project)
    git_init(project)

    log = sarif_of(project)

    categories = [run["automationDetails"]["id"] for run in log["runs"]]
    assert categories == ["pipeline/flake8/", "pipeline/trivy/"]


def test_sarif_rules_described(tmp_path: Path) -> None:
    log = sarif_of(tmp_path / "project")

    for run in log["runs"]:
        rules = run["tool"]["driver"]["rules"]
        ids = [rule["id"] for rule in rules]
        assert len(ids) == len(set(ids))
        for result in run["results"]:
            assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
        for rule in rules:
            assert rule["shortDescription"]["text"]
    flake8_rules = run_of(log, "flake8")["tool"]["driver"]["rules"]
    assert flake8_rules[0]["id"] == "F401"
    assert flake8_rules[0]["shortDescription"]["text"] == "F401 … imported but unused"


def test_sarif_trivy_security_severity(tmp_path: Path) -> None:
    rules = run_of(sarif_of(tmp_path / "project"), "Trivy")["tool"]["driver"]["rules"]

    scores = {rule["id"]: rule["properties"]["security-severity"] for rule in rules}
    # CVSS v3 scores of the severity source, and Trivy's 9.5 for a CRITICAL secret.
    assert scores == {"CVE-2023-45853": "9.8", "CVE-2020-14343": "9.8", "github-pat": "9.5"}
    for rule in rules:
        assert "security" in rule["properties"]["tags"]


def test_sarif_blocking_findings_are_errors(tmp_path: Path) -> None:
    log = sarif_of(tmp_path / "project")

    for result in all_results(log):
        assert result["properties"]["blocking"] is True
        assert result["level"] == "error"


def test_sarif_ignored_findings_never_errors(tmp_path: Path) -> None:
    # Nothing is LOW in the captured reports, so no Trivy finding blocks.
    log = sarif_of(tmp_path / "project", gate=("LOW",))
    trivy = run_of(log, "Trivy")

    assert trivy["results"]
    for result in trivy["results"]:
        assert result["properties"]["blocking"] is False
        assert result["level"] == "warning"
    for rule in trivy["tool"]["driver"]["rules"]:
        assert float(rule["properties"]["security-severity"]) < 7.0
        assert rule["defaultConfiguration"]["level"] != "error"


def test_sarif_paths_from_repository_root(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    project = repository / "examples" / "bridge-service"
    captured_record(project)
    git_init(repository)

    log = sarif_of(project)

    uris = {
        location["physicalLocation"]["artifactLocation"]["uri"]
        for result in all_results(log)
        for location in result["locations"]
    }
    assert uris == {
        "examples/bridge-service/bridge_service/api.py",
        "examples/bridge-service/bridge_service/credentials.py",
        "examples/bridge-service/Dockerfile",
    }
    categories = [run["automationDetails"]["id"] for run in log["runs"]]
    assert categories == [
        "pipeline/flake8/examples/bridge-service/",
        "pipeline/trivy/examples/bridge-service/",
    ]


def test_sarif_image_findings_on_dockerfile(tmp_path: Path) -> None:
    trivy = run_of(sarif_of(tmp_path / "project"), "Trivy")

    image_results = [r for r in trivy["results"] if r["properties"].get("image") == IMAGE]
    assert {r["ruleId"] for r in image_results} == {"CVE-2023-45853", "CVE-2020-14343", "github-pat"}
    for result in image_results:
        location = result["locations"][0]["physicalLocation"]
        assert location["artifactLocation"]["uri"] == "Dockerfile"
        assert location["region"] == {"startLine": 1}
        assert f"in image {IMAGE}" in result["message"]["text"]
    pyyaml = next(r for r in image_results if r["ruleId"] == "CVE-2020-14343")
    assert "usr/local/lib/python3.11/dist-packages/PyYAML-5.3.1.dist-info/METADATA" in (
        pyyaml["message"]["text"]
    )
    assert "PyYAML (fixed in 5.4) (in image" in pyyaml["message"]["text"]
    assert pyyaml["message"]["text"].count("fixed in") == 1


def test_sarif_scanned_image_without_build(tmp_path: Path) -> None:
    project = tmp_path / "project"
    record = captured_record(project)
    results = [result for result in record.results if result.name != "build"]

    log = build_sarif(results, RepositoryPaths.find(project, {}))

    assert log is not None
    uris = {
        result["ruleId"]: result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        for result in run_of(log, "Trivy")["results"]
        if result["properties"].get("image")
    }
    assert uris["CVE-2020-14343"] == (
        "usr/local/lib/python3.11/dist-packages/PyYAML-5.3.1.dist-info/METADATA"
    )
    # The OS package has no file, so the result names the image's repository.
    assert uris["CVE-2023-45853"] == "cap"


def test_sarif_missing_without_tools(tmp_path: Path) -> None:
    record = captured_record(tmp_path / "project")
    results = [result for result in record.results if result.name in ("test", "build")]

    assert build_sarif(results, RepositoryPaths.find(tmp_path / "project", {})) is None


def test_sarif_source_finding_keeps_line(tmp_path: Path) -> None:
    trivy = run_of(sarif_of(tmp_path / "project"), "Trivy")

    source = [r for r in trivy["results"] if "image" not in r["properties"]]
    assert len(source) == 1
    location = source[0]["locations"][0]["physicalLocation"]
    assert location["artifactLocation"]["uri"] == "bridge_service/credentials.py"
    assert location["region"] == {"startLine": 1}


@pytest.mark.parametrize(
    ("message", "description"),
    [
        ("'os' imported but unused", "… imported but unused"),
        ("line too long (91 > 88 characters)", "line too long (… > … characters)"),
        ("expected 2 blank lines, found 1", "expected … blank lines, found …"),
        ("undefined name 'x'", "undefined name …"),
    ],
)
def test_flake8_rule_hides_values(tmp_path: Path, message: str, description: str) -> None:
    record = captured_record(tmp_path / "project")
    lint = record.results[0]
    lint.findings = [Finding("flake8", "E000", message, "a.py", 1, 1)]

    log = build_sarif([lint], RepositoryPaths.find(tmp_path / "project", {}))

    assert log is not None
    rule = log["runs"][0]["tool"]["driver"]["rules"][0]
    assert rule["shortDescription"]["text"] == f"E000 {description}"


def test_schema_rejects_invalid_level(
    tmp_path: Path, sarif_validator: jsonschema.protocols.Validator
) -> None:
    log = sarif_of(tmp_path / "project")
    log["runs"][0]["results"][0]["level"] = "critical"

    errors = list(sarif_validator.iter_errors(log))

    assert errors, "the schema must reject a level outside error, warning, note and none"
