"""A local record of the layers that publish compressed before, so an image
whose layers a registry already has is pushed without compressing them again.

The cache maps a layer's uncompressed digest (its diff_id) and the
compression settings to the digest and size of the compressed blob. It is a
cache only: a missing, unreadable or invalid file is ignored and rewritten.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs

log = logging.getLogger(__name__)

APP_NAME = "rgbridge-pipeline"
FILE_NAME = "layer-digests.json"
FORMAT_VERSION = 1
# Oldest entries are dropped beyond this count, which keeps the file below
# about 240 KB (an entry takes about 235 bytes with zlib 1.2.13).
MAX_ENTRIES = 1000
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def default_path() -> Path:
    """Return the cache file: ``$XDG_CACHE_HOME/rgbridge-pipeline/`` or ``~/.cache/rgbridge-pipeline/`` on Linux."""
    return Path(platformdirs.user_cache_dir(APP_NAME)) / FILE_NAME


@dataclass(frozen=True)
class CompressedLayer:
    """The digest and size in bytes of a layer's compressed blob."""

    digest: str
    size: int


class LayerCache:
    """Compressed-blob descriptors by diff_id and compression settings, kept in a JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries = _load(path)
        self._added: dict[str, CompressedLayer] = {}

    def get(self, diff_id: str, settings: str) -> CompressedLayer | None:
        return self._entries.get(_key(diff_id, settings))

    def put(self, diff_id: str, settings: str, layer: CompressedLayer) -> None:
        key = _key(diff_id, settings)
        self._entries[key] = layer
        self._added[key] = layer

    def save(self) -> None:
        """Write the new entries, merged into the file as it is now, atomically.

        The file is read again first, so that entries that another publish
        wrote in the meantime stay. An error is logged and ignored, because
        a publish must not fail for its cache.
        """
        if not self._added:
            return
        entries = _load(self.path)
        for key, layer in self._added.items():
            entries.pop(key, None)
            entries[key] = layer
        kept = list(entries.items())[-MAX_ENTRIES:]
        document = {
            "version": FORMAT_VERSION,
            "layers": {key: {"digest": layer.digest, "size": layer.size} for key, layer in kept},
        }
        try:
            _write_atomically(self.path, json.dumps(document, indent=1))
        except OSError as exc:
            log.warning("could not write the layer cache %s: %s", self.path, exc)
            return
        self._added.clear()


def _write_atomically(path: Path, text: str) -> None:
    """Write a temporary file next to path and rename it, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _key(diff_id: str, settings: str) -> str:
    return f"{settings} {diff_id}"


def _load(path: Path) -> dict[str, CompressedLayer]:
    """Read the cache file; return no entries when it is missing or invalid."""
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring the unreadable layer cache %s (%s); it is rewritten", path, exc)
        return {}
    layers = document.get("layers") if isinstance(document, dict) else None
    if not isinstance(layers, dict) or document.get("version") != FORMAT_VERSION:
        log.warning("ignoring the layer cache %s: not version %d of its format; it is rewritten", path, FORMAT_VERSION)
        return {}
    entries = {}
    for key, value in layers.items():
        if not isinstance(value, dict):
            continue
        digest, size = value.get("digest"), value.get("size")
        if isinstance(digest, str) and _DIGEST.fullmatch(digest) and type(size) is int and size > 0:
            entries[key] = CompressedLayer(digest, size)
    return entries
