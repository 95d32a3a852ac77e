"""The package type-checks under mypy --strict (settings in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO_ROOT


def test_mypy_strict_passes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert result.returncode == 0, result.stdout + result.stderr
