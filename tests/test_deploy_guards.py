"""What `pipeline deploy`, `promote` and `rollback` refuse before they touch a
target, and the audit line each refusal leaves. The refusals need no engine:
they must happen before any orchestrator is contacted."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
from pathlib import Path

import pytest

from conftest import ProjectFactory, RunCli
from pipeline.audit import Entry, Trail, actor
from pipeline.secrets import Redactor

DIGEST = "sha256:" + "ab" * 32
SETTINGS = """
[environments.staging]
registry = { repository = "127.0.0.1:5001/shop" }
target = { kind = "swarm", publish = "proxy", published_port = 18080 }

[environments.prod]
registry = { repository = "127.0.0.1:5001/shop" }
target = { kind = "swarm" }
approval = true
"""


@pytest.fixture
def project(project_factory: ProjectFactory) -> Path:
    return project_factory({"pipeline.toml": SETTINGS, "app.py": "X = 1\n"})


def audit_lines(project: Path) -> list[dict[str, object]]:
    path = project / ".pipeline" / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_unknown_environment_names_the_configured_ones(project: Path, run_cli: RunCli) -> None:
    result = run_cli("deploy", "--env", "qa", "-C", str(project), f"127.0.0.1:5001/shop@{DIGEST}")

    assert result.returncode == 2
    assert "unknown environment 'qa'" in result.stderr
    assert "prod, staging" in result.stderr
    assert audit_lines(project) == []


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("127.0.0.1:5001/shop:1.4.0", "not an image digest reference"),
        ("127.0.0.1:5001/shop@sha256:abc", "not an image digest reference"),
        (f"127.0.0.1:5001/other@{DIGEST}", "not in the registry of environment 'staging'"),
    ],
)
def test_deploy_rejects_non_digest_images(
    project: Path, run_cli: RunCli, image: str, message: str
) -> None:
    result = run_cli("deploy", "--env", "staging", "-C", str(project), image)

    assert result.returncode == 2
    assert message in result.stderr
    assert audit_lines(project) == []


def test_deploy_without_approval_is_refused_and_recorded(
    project: Path, run_cli: RunCli
) -> None:
    image = f"127.0.0.1:5001/shop@{DIGEST}"

    result = run_cli(
        "deploy", "--env", "prod", "-C", str(project), image,
        env={"PIPELINE_ACTOR": "release-bot", "PIPELINE_APPROVED_BY": ""},
    )

    assert result.returncode == 2
    assert "needs an approval" in result.stderr
    assert "--approved-by" in result.stderr
    [line] = audit_lines(project)
    assert line["action"] == "deploy"
    assert line["environment"] == "prod"
    assert line["result"] == "refused"
    assert line["image"] == image
    assert line["actor"] == "release-bot"
    assert line["approval"] is None
    # The line also reached the log.
    assert '"result":"refused"' in result.stderr


def test_promote_to_itself_is_refused(project: Path, run_cli: RunCli) -> None:
    result = run_cli("promote", "--from", "staging", "--to", "staging", "-C", str(project))

    assert result.returncode == 2
    assert "cannot promote 'staging' to itself" in result.stderr


def test_rollback_of_unknown_environment(project: Path, run_cli: RunCli) -> None:
    result = run_cli("rollback", "--env", "nowhere", "-C", str(project))

    assert result.returncode == 2
    assert "unknown environment 'nowhere'" in result.stderr


def test_literal_password_in_settings_is_refused_unprinted(
    project_factory: ProjectFactory, run_cli: RunCli
) -> None:
    settings = SETTINGS.replace(
        'repository = "127.0.0.1:5001/shop" }',
        'repository = "127.0.0.1:5001/shop", password = "Zq8vL2mXk4" }',
        1,
    )
    root = project_factory({"pipeline.toml": settings})

    result = run_cli("deploy", "--env", "staging", "-C", str(root), f"127.0.0.1:5001/shop@{DIGEST}")

    assert result.returncode == 2
    assert "environments.staging.registry.password" in result.stderr
    assert "env://VARIABLE or file://PATH" in result.stderr
    assert "Zq8vL2mXk4" not in result.output


def _append_many(path: str, worker: int) -> None:
    trail = Trail(Path(path), Redactor(), Path(path).parent)
    for number in range(200):
        trail.append(Entry("deploy", "staging", f"img@{worker}-{number}", detail="x" * 500, actor="t"))


def test_concurrent_appends_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    workers = [multiprocessing.Process(target=_append_many, args=(str(path), n)) for n in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)

    lines = path.read_text().splitlines()
    assert len(lines) == 800
    images = {json.loads(line)["image"] for line in lines}
    assert len(images) == 800


def test_trail_redacts_secrets_and_names_the_actor(tmp_path: Path) -> None:
    redactor = Redactor()
    redactor.add("s3cr3t-Token-77")
    trail = Trail(tmp_path / "audit.jsonl", redactor, tmp_path)

    line = trail.append(Entry("publish", None, "r@x", detail="login with s3cr3t-Token-77 failed"))

    assert "s3cr3t-Token-77" not in line
    assert "s3cr3t-Token-77" not in (tmp_path / "audit.jsonl").read_text()
    assert json.loads(line)["detail"] == "login with *** failed"
    assert json.loads(line)["actor"]


def test_actor_prefers_the_ci_user(tmp_path: Path) -> None:
    assert actor(tmp_path, {"GITHUB_ACTOR": "octo", "GITLAB_USER_LOGIN": "gl"}) == "octo"
    assert actor(tmp_path, {"GITLAB_USER_LOGIN": "gl"}) == "gl"
    assert actor(tmp_path, {}) != ""


def git_tag(root: Path, tag: str) -> None:
    subprocess.run(["git", "tag", tag], cwd=root, check=True, capture_output=True)


RELEASE_SETTINGS = SETTINGS.replace(
    'published_port = 18080 }\n', 'published_port = 18080 }\nrelease_tags = ["v*"]\n', 1
) + 'release_tags = ["prod-*"]\n'
RELEASE_PROJECT = {
    "pipeline.toml": RELEASE_SETTINGS,
    "requirements.txt": "",
    "app.py": "X = 1\n",
    "Dockerfile": "FROM python:3.11-slim\n",
}


def test_release_without_tag_is_refused(project_factory: ProjectFactory, run_cli: RunCli) -> None:
    root = project_factory(RELEASE_PROJECT, git=True)

    result = run_cli("release", str(root))

    assert result.returncode == 2
    assert "release needs a git tag" in result.stderr
    assert audit_lines(root) == []


def test_release_tag_without_environment_is_refused(
    project_factory: ProjectFactory, run_cli: RunCli
) -> None:
    root = project_factory(RELEASE_PROJECT, git=True)
    git_tag(root, "nightly-7")

    result = run_cli("release", str(root))

    assert result.returncode == 2
    assert "no environment releases tag 'nightly-7'" in result.stderr
    assert "staging: v*" in result.stderr
    assert "prod: prod-*" in result.stderr


def test_release_needing_approval_stops_before_ci(
    project_factory: ProjectFactory, run_cli: RunCli
) -> None:
    root = project_factory(RELEASE_PROJECT, git=True)
    git_tag(root, "prod-2026-12")

    result = run_cli("release", str(root), env={"PIPELINE_APPROVED_BY": ""})

    assert result.returncode == 2
    assert "environment 'prod' needs an approval" in result.stderr
    # Nothing ran: no engine line, no reports.
    assert "engine:" not in result.stderr
    assert not (root / ".pipeline" / "reports").exists()
    [line] = audit_lines(root)
    assert line["result"] == "refused"
    assert line["detail"] == "release prod-2026-12; no approval"


def test_deploy_without_environments_points_at_project(
    project_factory: ProjectFactory, run_cli: RunCli
) -> None:
    root = project_factory({"app.py": "X = 1\n"})

    result = run_cli("deploy", "--env", "dev", "-C", str(root), f"127.0.0.1:5001/shop@{DIGEST}")

    assert result.returncode == 2
    assert "no environments are configured" in result.stderr
    assert "-C PATH" in result.stderr


@pytest.mark.parametrize("kind", ["symlink", "device", "parent-is-file"])
def test_unwritable_audit_trail_stops_deploy_first(
    project: Path, run_cli: RunCli, tmp_path: Path, kind: str
) -> None:
    if kind == "symlink":
        trail = tmp_path / "link.jsonl"
        trail.symlink_to(tmp_path / "elsewhere.jsonl")
        message = "is a symbolic link"
    elif kind == "device":
        trail = Path("/dev/null")
        message = "is not a regular file"
    else:
        (tmp_path / "plain").write_text("")
        trail = tmp_path / "plain" / "audit.jsonl"
        message = "is not a folder"

    result = run_cli(
        "deploy", "--env", "staging", "-C", str(project), f"127.0.0.1:5001/shop@{DIGEST}",
        env={"PIPELINE_AUDIT__PATH": str(trail)},
    )

    assert result.returncode == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_project_cannot_put_audit_trail_outside(
    project_factory: ProjectFactory, run_cli: RunCli, tmp_path: Path
) -> None:
    settings = SETTINGS + f'\n[audit]\npath = "{tmp_path}/outside.jsonl"\n'
    root = project_factory({"pipeline.toml": settings})

    result = run_cli("rollback", "--env", "staging", "-C", str(root))

    assert result.returncode == 2
    assert "'audit.path'" in result.stderr
    assert not (tmp_path / "outside.jsonl").exists()
