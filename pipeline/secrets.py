"""Secret references: resolved only when a container needs them, and redacted
from every line of output the pipeline prints or writes."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ConfigError
from .spec import SecretRef

SCHEMES = ("env", "file")


def parse_uri(uri: str) -> tuple[str, str]:
    """Split ``env://NAME`` or ``file://PATH`` into scheme and location."""
    parts = urlsplit(uri)
    if parts.scheme not in SCHEMES:
        raise ConfigError(
            f"unsupported secret reference {uri!r}",
            hint="use env://VARIABLE or file://PATH",
        )
    location = parts.netloc + parts.path
    if not location:
        raise ConfigError(f"secret reference {uri!r} names no variable or file")
    return parts.scheme, location


class Redactor:
    """Replaces every resolved secret value with ``***`` in text."""

    def __init__(self) -> None:
        self._values: set[str] = set()

    def add(self, value: str) -> None:
        # Very short values would blank out ordinary words.
        if len(value) >= 4:
            self._values.add(value)

    @property
    def max_length(self) -> int:
        """The length of the longest value, 0 when there is none."""
        return max((len(value) for value in self._values), default=0)

    def __call__(self, text: str) -> str:
        for value in sorted(self._values, key=len, reverse=True):
            text = text.replace(value, "***")
        return text


def resolve(ref: SecretRef, redactor: Redactor) -> str:
    """Read a secret's value, registering it with the redactor first."""
    scheme, location = parse_uri(ref.uri)
    if scheme == "env":
        value = os.environ.get(location)
        if value is None:
            raise ConfigError(
                f"secret {ref.name!r}: environment variable {location} is not set",
                hint=f"export {location} before the run",
            )
    else:
        path = Path(location).expanduser()
        try:
            value = path.read_text()
        except OSError as exc:
            raise ConfigError(
                f"secret {ref.name!r}: cannot read {path}: {exc.strerror}"
            ) from exc
    redactor.add(value.strip())
    return value
