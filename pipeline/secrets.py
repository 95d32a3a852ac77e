"""Secret references: resolved only when a container needs them, and redacted
from every line of output the pipeline prints or writes."""

from __future__ import annotations

import json
import os
import stat
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


# Every value any redactor of this process has seen. Errors that end the
# process are printed outside the run that resolved the secret, so the CLI
# redacts them with ``redact`` instead of a run's redactor.
_KNOWN: set[str] = set()
# Longer secret files are rejected: registry tokens and passwords are short,
# and reading /dev/zero or a log file by mistake must not exhaust memory.
MAX_SECRET_BYTES = 64 * 1024


def _written_forms(value: str) -> set[str]:
    """Return the value as written raw, in JSON strings and in Python reprs,
    where quotes, backslashes and non-ASCII characters are escaped."""
    return {
        value,
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        repr(value)[1:-1],
        value.encode("unicode_escape").decode("ascii"),
    }


def _replace(text: str, values: set[str]) -> str:
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, "***")
    return text


class Redactor:
    """Replaces every resolved secret value with ``***`` in text, also where
    the value appears escaped inside JSON or a Python repr."""

    def __init__(self) -> None:
        self._values: set[str] = set()

    def add(self, value: str) -> None:
        # NOTE: values shorter than 4 characters are not redacted, because
        # they would blank out ordinary words.
        if len(value) >= 4:
            forms = _written_forms(value)
            self._values.update(forms)
            _KNOWN.update(forms)

    @property
    def max_length(self) -> int:
        """The length of the longest value, 0 when there is none."""
        return max((len(value) for value in self._values), default=0)

    def __call__(self, text: str) -> str:
        return _replace(text, self._values)


def redact(text: str) -> str:
    """Replace every secret value resolved so far in this process."""
    return _replace(text, _KNOWN)


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
        value = _read_secret_file(ref, Path(location).expanduser())
    redactor.add(value.strip())
    if not value.strip():
        source = f"environment variable {location}" if scheme == "env" else location
        raise ConfigError(
            f"secret {ref.name!r}: {source} is empty",
            hint="put the secret's value there, or fix the reference",
        )
    return value


def _read_secret_file(ref: SecretRef, path: Path) -> str:
    """Read a secret file: a regular UTF-8 file of at most MAX_SECRET_BYTES."""
    try:
        info = path.stat()
    except OSError as exc:
        raise ConfigError(f"secret {ref.name!r}: cannot read {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(
            f"secret {ref.name!r}: {path} is not a regular file",
            hint="point the file:// reference at the file that contains the secret",
        )
    if info.st_size > MAX_SECRET_BYTES:
        raise ConfigError(
            f"secret {ref.name!r}: {path} has {info.st_size} bytes, more than "
            f"the {MAX_SECRET_BYTES} a secret may have",
            hint="point the file:// reference at the file that contains only the secret",
        )
    try:
        data = path.read_bytes()[: MAX_SECRET_BYTES + 1]
    except OSError as exc:
        raise ConfigError(f"secret {ref.name!r}: cannot read {path}: {exc.strerror}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            f"secret {ref.name!r}: {path} is not UTF-8 text",
            hint="store the secret as text, such as a base64 encoding of binary data",
        ) from None
