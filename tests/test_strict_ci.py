"""Missing test infrastructure skips locally and fails under CI=true."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT


def run_example_test(ci: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    # Nothing listens on this port, so the registry, the base image and the
    # vulnerability database all look missing.
    env.update(CI=ci, PIPELINE_TEST_REGISTRY="127.0.0.1:9")
    return subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "tests/test_example.py::test_example_passes_ci",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("ci", "returncode", "word"),
    [("true", 1, "error"), ("false", 0, "skipped")],
    ids=["ci-fails", "local-skips"],
)
def test_missing_database(ci: str, returncode: int, word: str) -> None:
    result = run_example_test(ci)

    assert result.returncode == returncode, result.stdout
    assert word in result.stdout
    assert "run scripts/setup" in result.stdout or word == "skipped"
