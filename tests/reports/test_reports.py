"""write_record writes every report and lists it in run.json, and a new run
first removes the files that an earlier run left."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import _report
from pipeline.reports import pipeline_file_names, reset_reports_folder
from pipeline.run import write_record

from .captured import IMAGE, IMAGE_ID, captured_record, unit_test_result

REPORT_FILES = {
    "junit": "junit.xml",
    "sarif": "pipeline.sarif",
    "codequality": "gl-code-quality-report.json",
    "container_scanning": "gl-container-scanning-report.json",
    "summary": "summary.md",
}


def test_record_lists_every_report(tmp_path: Path) -> None:
    record = captured_record(tmp_path / "project")
    assert record.reports_dir is not None

    path = write_record(record, environ={})

    assert path == record.reports_dir / "run.json"
    on_disk = json.loads(path.read_text())
    assert on_disk["reports"] == {
        kind: str(record.reports_dir / name) for kind, name in REPORT_FILES.items()
    }
    for name in REPORT_FILES.values():
        assert (record.reports_dir / name).is_file(), name


def test_record_image_block(tmp_path: Path) -> None:
    record = captured_record(tmp_path / "project")

    write_record(record, environ={})

    image = record.to_dict()["image"]
    assert image == {
        "name": IMAGE,
        "id": IMAGE_ID,
        "tags": [IMAGE],
        "digests": [],
        "operating_system": "debian:12.15",
    }


def test_record_step_fields(tmp_path: Path) -> None:
    record = captured_record(tmp_path / "project")

    steps = {step["name"]: step for step in record.to_dict()["steps"]}

    scan = steps["scan"]
    assert scan["status"] == "failed"
    assert scan["started"] == "2026-12-04T15:51:41+00:00"
    assert scan["duration"] == 11.9
    assert scan["image"] == IMAGE
    assert scan["findings"] == {"CRITICAL": 4}
    assert scan["blocking_findings"] == 4
    assert scan["details"]["image_id"] == IMAGE_ID
    assert steps["build"]["details"]["dockerfile"] == "Dockerfile"
    assert steps["lint"]["findings"] == {"error": 1}


def test_stale_reports_removed(tmp_path: Path) -> None:
    record = captured_record(tmp_path / "project")
    reports = record.reports_dir
    assert reports is not None
    write_record(record, environ={})
    (reports / "notes.txt").write_text("kept\n")
    (reports / "history").mkdir()
    (reports / "history" / "run.json").write_text("{}\n")

    # A second run that runs only the test step.
    reset_reports_folder(record.project, reports)
    record.results = [unit_test_result(reports)]
    write_record(record, environ={})

    for name in (
        "pipeline.sarif",
        "gl-code-quality-report.json",
        "gl-container-scanning-report.json",
        "flake8.txt",
        "trivy-image.json",
        "trivy-source.json",
    ):
        assert not (reports / name).exists(), name
    assert set(record.reports) == {"junit", "summary"}
    assert (reports / "junit.xml").is_file()
    assert (reports / "notes.txt").read_text() == "kept\n"
    assert (reports / "history" / "run.json").read_text() == "{}\n"


def test_reset_removes_pipeline_files_only(tmp_path: Path) -> None:
    project = tmp_path / "project"
    reports = project / ".pipeline" / "reports"
    reports.mkdir(parents=True)
    for name in pipeline_file_names():
        (reports / name).write_text("earlier run\n")
    (reports / "custom.log").write_text("not the pipeline's\n")
    (reports / "lint.log.bak").write_text("not the pipeline's\n")

    removed = reset_reports_folder(project, reports)

    assert sorted(path.name for path in removed) == sorted(pipeline_file_names())
    assert sorted(path.name for path in reports.iterdir()) == ["custom.log", "lint.log.bak"]


def test_known_names_cover_every_file() -> None:
    names = set(pipeline_file_names())

    assert {"lint.log", "test.log", "build.log", "scan.log"} <= names
    assert {"flake8.txt", "junit.xml", "trivy-image.json", "trivy-source.json"} <= names
    assert set(REPORT_FILES.values()) <= names
    assert "run.json" in names


def test_summary_appended_to_step_summary(tmp_path: Path) -> None:
    step_summary = tmp_path / "step-summary.md"
    step_summary.write_text("earlier step\n")
    record = captured_record(tmp_path / "project")

    write_record(record, environ={"GITHUB_STEP_SUMMARY": str(step_summary)})
    write_record(record, environ={"GITHUB_STEP_SUMMARY": str(step_summary)})

    text = step_summary.read_text()
    assert text.startswith("earlier step\n## pipeline: failed\n")
    assert text.count("## pipeline: failed") == 2


def test_unwritable_step_summary_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    record = captured_record(tmp_path / "project")
    missing = tmp_path / "no-such-folder" / "summary.md"

    path = write_record(record, environ={"GITHUB_STEP_SUMMARY": str(missing)})

    assert path is not None
    assert path.is_file()
    assert "could not append the summary to GITHUB_STEP_SUMMARY" in caplog.text


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_cli_prints_annotations(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    as_json: bool,
) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.delenv("GITLAB_CI", raising=False)
    record = captured_record(tmp_path / "project")

    _report(record, as_json)

    out, err = capsys.readouterr()
    annotated, other = (err, out) if as_json else (out, err)
    assert "::error file=bridge_service/api.py,line=1,col=1,title=flake8 F401::" in annotated
    assert "::error" not in other
    if as_json:
        assert json.loads(out)["run_id"] == record.run_id


def test_cli_prints_gitlab_sections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GITLAB_CI", "true")
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    record = captured_record(tmp_path / "project")

    _report(record, as_json=False)

    out, err = capsys.readouterr()
    assert err.count("\x1b[0Ksection_start:") == 4
    assert err.count("\x1b[0Ksection_end:") == 4
    assert "\x1b[0Ksection_start:" not in out
