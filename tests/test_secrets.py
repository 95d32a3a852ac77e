"""Secret references: how files are read, and where values are redacted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.secrets import MAX_SECRET_BYTES, Redactor, redact, resolve
from pipeline.spec import SecretRef

SECRET = 'Zq"x\\y-wörd-7731'


def test_redactor_covers_escaped_forms() -> None:
    redactor = Redactor()
    redactor.add(SECRET)

    for text in (SECRET, json.dumps(SECRET), json.dumps(SECRET, ensure_ascii=False), repr(SECRET)):
        assert "wörd" not in redactor(text), text
        assert "w\\u00f6rd" not in redactor(text), text
        assert "***" in redactor(text)


def test_process_redaction_knows_resolved_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RGB_TEST_SECRET", "Kx81-unique-value")

    resolve(SecretRef("token", "env://RGB_TEST_SECRET"), Redactor())

    assert redact("login of user 'Kx81-unique-value' rejected") == "login of user '***' rejected"


def test_empty_secret_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RGB_EMPTY_SECRET", "  ")

    with pytest.raises(ConfigError, match="RGB_EMPTY_SECRET is empty"):
        resolve(SecretRef("password", "env://RGB_EMPTY_SECRET"), Redactor())


@pytest.mark.parametrize("kind", ["binary", "large", "fifo", "folder"])
def test_unusable_secret_files_rejected(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "secret"
    if kind == "binary":
        path.write_bytes(b"\xff\xfe\x00secret")
        message = "is not UTF-8 text"
    elif kind == "large":
        path.write_bytes(b"a" * (MAX_SECRET_BYTES + 1))
        message = "more than"
    elif kind == "fifo":
        os.mkfifo(path)
        message = "is not a regular file"
    else:
        path.mkdir()
        message = "is not a regular file"

    with pytest.raises(ConfigError, match=message):
        resolve(SecretRef("password", f"file://{path}"), Redactor())
