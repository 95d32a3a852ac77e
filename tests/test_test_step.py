"""The test step on sample projects: installable packages, local
requirements, and pytest's "no tests collected"."""

from __future__ import annotations

import docker
import pytest

from conftest import ProjectFactory, RunCli, run_resources

pytestmark = pytest.mark.engine

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
