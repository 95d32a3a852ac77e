import pytest
from pydantic import ValidationError

from bridge_service.config import Settings, format_address


def test_settings_defaults(monkeypatch):
    for name in ("HOST", "PORT", "THREADS", "LOG_LEVEL", "CHANNEL_NAME"):
        monkeypatch.delenv(f"BRIDGE_{name}", raising=False)

    settings = Settings()

    assert settings.host == "127.0.0.1"
    assert settings.port == 8080
    assert settings.log_level == "INFO"


def test_settings_read_environment(monkeypatch):
    monkeypatch.setenv("BRIDGE_PORT", "9090")
    monkeypatch.setenv("BRIDGE_LOG_LEVEL", "debug")
    monkeypatch.setenv("BRIDGE_CHANNEL_NAME", "siteminder")

    settings = Settings()

    assert settings.port == 9090
    assert settings.log_level == "DEBUG"
    assert settings.channel_name == "siteminder"


@pytest.mark.parametrize(
    ("name", "value"),
    [("BRIDGE_PORT", "70000"), ("BRIDGE_PORT", "http"), ("BRIDGE_LOG_LEVEL", "loud")],
)
def test_settings_reject_invalid(monkeypatch, name, value):
    monkeypatch.setenv(name, value)

    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize(
    ("host", "expected"),
    [("0.0.0.0", "0.0.0.0:8080"), ("::1", "[::1]:8080")],
)
def test_format_address(host, expected):
    assert format_address(host, 8080) == expected
