"""Every stopping signal ends a run with exit 130 and no containers left,
also when a second signal arrives during cleanup."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import docker
import pytest

from conftest import PIPELINE, RUN_LABEL, run_resources

pytestmark = pytest.mark.engine

HANGING_TEST = "import time\n\n\ndef test_hangs():\n    time.sleep(300)\n"


def wait_for_test_container(client: docker.DockerClient, project: Path) -> str | None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for container in client.containers.list(filters={"label": RUN_LABEL}):
            if container.labels.get("io.rgbridge.pipeline.project") == str(project.resolve()):
                return str(container.labels[RUN_LABEL])
        time.sleep(0.3)
    return None


@pytest.mark.parametrize(
    "signals",
    [
        (signal.SIGHUP,),
        (signal.SIGTERM,),
        (signal.SIGTERM, signal.SIGTERM),
        (signal.SIGINT, signal.SIGTERM),
    ],
    ids=["hangup", "terminate", "terminate-twice", "interrupt-then-terminate"],
)
def test_signal_stops_run_cleanly(
    engine: docker.DockerClient,
    project_factory: object,
    cli_env: dict[str, str],
    signals: tuple[signal.Signals, ...],
) -> None:
    root = project_factory(  # type: ignore[operator]
        {"requirements.txt": "", "tests/test_hang.py": HANGING_TEST}
    )
    process = subprocess.Popen(
        [str(PIPELINE), "test", str(root), "--json"],
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        run_id = wait_for_test_container(engine, root)
        assert run_id is not None, "the run never started its test container"
        time.sleep(1)
        for number in signals:
            process.send_signal(number)
            time.sleep(0.02)
        stdout, stderr = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()

    assert process.returncode == 130, stderr
    assert json.loads(stdout)["run_id"] == run_id
    assert run_resources(engine, run_id) == []
