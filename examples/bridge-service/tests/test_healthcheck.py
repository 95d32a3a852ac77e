import socket
import threading

import pytest
from werkzeug.serving import make_server

from bridge_service import healthcheck
from bridge_service.config import Settings


@pytest.fixture
def server(app):
    """Serve the app on a free loopback port until the test ends."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    thread.join(timeout=5)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_healthcheck_passes_on_running_app(monkeypatch, server):
    monkeypatch.setenv("BRIDGE_HOST", "0.0.0.0")
    monkeypatch.setenv("BRIDGE_PORT", str(server.server_port))

    assert healthcheck.main() == 0


def test_healthcheck_fails_without_server(monkeypatch, capsys):
    monkeypatch.setenv("BRIDGE_HOST", "127.0.0.1")
    monkeypatch.setenv("BRIDGE_PORT", str(free_port()))

    assert healthcheck.main() == 1
    assert "health check failed" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:8080/health"),
        ("::", "http://[::1]:8080/health"),
        ("10.1.2.3", "http://10.1.2.3:8080/health"),
    ],
)
def test_health_url(host, url):
    assert healthcheck.health_url(Settings(host=host, port=8080)) == url
