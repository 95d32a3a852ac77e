"""The test step on sample projects: installable packages, local
requirements, pytest's "no tests collected", the timeout, the project's own
dependency cache and unusable JUnit reports."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from conftest import ProjectFactory, RunCli, run_resources
from pipeline.backends.docker import CACHE_LABEL, CACHE_VOLUME_PREFIX
from pipeline.config import PytestSettings
from pipeline.project import Project
from pipeline.steps._context import project_cache

pytestmark = pytest.mark.engine


def remove_project_caches(client: docker.DockerClient, folder: Path) -> None:
    """Remove the cache volumes of ``folder`` and the projects in it."""
    for project in [folder, *folder.iterdir()] if folder.is_dir() else []:
        if not project.is_dir():
            continue
        name = CACHE_VOLUME_PREFIX + project_cache(Project(project)).key
        try:
            client.volumes.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass


@pytest.fixture(autouse=True)
def project_caches_removed(
    docker_client: docker.DockerClient, tmp_path: Path
) -> Iterator[None]:
    """Remove the cache volumes of this module's sample projects."""
    yield
    remove_project_caches(docker_client, tmp_path)


PACKAGE = {
    "pyproject.toml": (
        "[build-system]\nrequires = ['setuptools>=69']\nbuild-backend = 'setuptools.build_meta'\n"
        "[project]\nname = 'greeter'\nversion = '1.0'\ndependencies = ['six==1.16.0']\n"
        "[tool.setuptools.packages.find]\nwhere = ['src']\n"
    ),
    "src/greeter/__init__.py": "import six\n\n\ndef greet(name):\n    return six.text_type('hi ' + name)\n",
    "tests/test_greeter.py": (
        "import greeter\n\n\ndef test_greet():\n    assert greeter.greet('ada') == 'hi ada'\n\n\n"
        "def test_installed_not_source():\n    assert '/src/src/' not in greeter.__file__\n"
    ),
}


def test_installable_package_tested(
    engine: docker.DockerClient, project_factory: ProjectFactory, run_cli: RunCli
) -> None:
    root = project_factory(PACKAGE)

    first = run_cli("test", str(root), "--json")
    (root / "src" / "greeter" / "__init__.py").write_text(
        "import six\n\n\ndef greet(name):\n    return six.text_type('hello ' + name)\n"
    )
    second = run_cli("test", str(root), "--json")

    assert first.returncode == 0, first.output
    assert first.step("test")["details"]["counts"]["tests"] == 2
    # The changed source is what the second run tests, not a cached install.
    assert second.returncode == 1, second.output
    assert "tests/test_greeter.py::test_greet" in second.stderr
    assert run_resources(engine, second.run_id) == []


def test_local_requirement_installed(
    engine: docker.DockerClient, project_factory: ProjectFactory, run_cli: RunCli
) -> None:
    files = dict(PACKAGE)
    files["requirements-dev.txt"] = "-e .\npytest\n"
    root = project_factory(files)

    result = run_cli("test", str(root), "--json")

    assert result.returncode == 0, result.output
    assert result.step("test")["summary"] == "2 passed"


def test_no_tests_fails(engine: docker.DockerClient, project_factory: ProjectFactory, run_cli: RunCli) -> None:
    root = project_factory({"requirements.txt": "", "app.py": "X = 1\n"})

    result = run_cli("test", str(root), "--json")

    assert result.returncode == 1, result.output
    assert "no tests collected" in result.step("test")["summary"]
    assert "allow_no_tests" in result.step("test")["summary"]


def test_no_tests_allowed(engine: docker.DockerClient, project_factory: ProjectFactory, run_cli: RunCli) -> None:
    root = project_factory(
        {"requirements.txt": "", "app.py": "X = 1\n", "pipeline.toml": "[test]\nallow_no_tests = true\n"}
    )

    result = run_cli("test", str(root), "--json")

    assert result.returncode == 0, result.output
    assert result.step("test")["summary"] == "no tests collected"


def test_broken_requirement_named(
    engine: docker.DockerClient, project_factory: ProjectFactory, run_cli: RunCli
) -> None:
    root = project_factory(
        {"requirements.txt": "this-package-does-not-exist-7f3a==1.0\n", "tests/test_x.py": "def test_x():\n    pass\n"}
    )

    result = run_cli("test", str(root), "--json")

    assert result.returncode == 1, result.output
    assert "installing dependencies failed" in result.step("test")["summary"]
    assert "this-package-does-not-exist-7f3a" in result.stderr


def test_dependencies_cached_per_project(
    engine: docker.DockerClient, project_factory: ProjectFactory, run_cli: RunCli
) -> None:
    # The shared tools cache, which contains trivy and flake8, is not mounted,
    # so a project's tests cannot replace the tools that scan other projects.
    isolation = (
        "import os\n\n\n"
        "def test_tools_cache_absent():\n"
        "    assert not os.path.exists('/opt/pipeline-tools')\n\n\n"
        "def test_own_cache_writable():\n"
        "    with open('/opt/pipeline-project-cache/written-by-tests', 'w') as handle:\n"
        "        handle.write('mine')\n"
    )
    root = project_factory({"requirements.txt": "", "tests/test_isolation.py": isolation})

    result = run_cli("test", str(root), "--json")

    assert result.returncode == 0, result.output
    assert result.step("test")["summary"] == "2 passed"
    cache = engine.volumes.get(CACHE_VOLUME_PREFIX + project_cache(Project(root)).key)
    assert cache.attrs["Labels"][CACHE_LABEL].startswith("project-")
    assert run_resources(engine, result.run_id) == []


@pytest.mark.skipif(
    "timeout" not in PytestSettings.model_fields,
    reason="the settings have no test.timeout yet",
)
def test_timeout_stops_pytest(
    engine: docker.DockerClient, project_factory: ProjectFactory, run_cli: RunCli
) -> None:
    root = project_factory(
        {
            "requirements.txt": "",
            "pipeline.toml": "[test]\ntimeout = 5\n",
            "tests/test_slow.py": "import time\n\n\ndef test_slow():\n    time.sleep(120)\n",
        }
    )

    result = run_cli("test", str(root), "--json", timeout=300)

    assert result.returncode == 1, result.output
    assert result.step("test")["summary"].startswith("pytest timed out after 5 s")
    assert run_resources(engine, result.run_id) == []


CORRUPT_JUNIT = """\
import pathlib


def pytest_unconfigure(config):
    # Runs after pytest wrote its JUnit report.
    pathlib.Path("/reports/junit.xml").write_text("<testsuites><testsuite")
"""


def test_corrupt_junit_tolerated(
    engine: docker.DockerClient, project_factory: ProjectFactory, run_cli: RunCli
) -> None:
    root = project_factory(
        {
            "requirements.txt": "",
            "conftest.py": CORRUPT_JUNIT,
            "tests/test_x.py": "def test_x():\n    assert 1 == 2\n",
        }
    )

    result = run_cli("test", str(root), "--json")

    assert result.returncode == 1, result.output
    assert "Traceback" not in result.stderr
    step = result.step("test")
    assert step["status"] == "failed"
    assert "junit.xml is not a valid JUnit report" in step["summary"]
    assert "counts" not in step["details"]
    assert "tests/test_x.py::test_x" in result.stderr


@pytest.mark.parametrize("traceback_style", ["auto", "native"])
def test_failure_shows_line(
    engine: docker.DockerClient,
    project_factory: ProjectFactory,
    run_cli: RunCli,
    traceback_style: str,
) -> None:
    root = project_factory(
        {
            "requirements.txt": "",
            "pipeline.toml": f"[test]\nargs = ['--tb={traceback_style}']\n",
            "tests/test_x.py": "def test_ok():\n    pass\n\n\ndef test_bad():\n"
            "    value = 1\n    assert value == 2, 'boom'\n",
        }
    )

    result = run_cli("test", str(root), "--json")

    assert result.returncode == 1, result.output
    assert "tests/test_x.py:7: tests/test_x.py::test_bad AssertionError: boom" in result.stderr
    [finding] = result.step("test")["findings_list"]
    assert (finding["path"], finding["line"]) == ("tests/test_x.py", 7)


def test_collection_error_shows_line(
    engine: docker.DockerClient, project_factory: ProjectFactory, run_cli: RunCli
) -> None:
    root = project_factory(
        {"requirements.txt": "", "tests/test_broken.py": "X = 1\n\ndef test_s(:\n    pass\n"}
    )

    result = run_cli("test", str(root), "--json")

    assert result.returncode == 1, result.output
    assert re.search(r"tests/test_broken\.py:3: tests/test_broken\.py ", result.stderr), (
        result.stderr
    )
