"""Service settings, read from ``BRIDGE_*`` environment variables."""

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class Settings(BaseSettings):
    """Settings of the bridge service. ``BRIDGE_PORT`` sets ``port``, and so on."""

    model_config = SettingsConfigDict(env_prefix="BRIDGE_")

    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Address that gunicorn binds to. The image sets 0.0.0.0.",
    )
    port: int = Field(
        default=8080, ge=1, le=65535, description="TCP port that gunicorn binds to."
    )
    threads: int = Field(
        default=4, ge=1, description="Request threads of the single gunicorn worker."
    )
    log_level: LogLevel = Field(
        default="INFO", description="Minimum level of the JSON log lines."
    )
    channel_name: str = Field(
        default="channel-manager",
        min_length=1,
        max_length=64,
        description="Name of the channel system that reservations are mapped for.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _uppercase_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


def format_address(host: str, port: int) -> str:
    """Join host and port, putting an IPv6 address in brackets."""
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"
