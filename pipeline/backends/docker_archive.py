"""Turn an image archive of ``docker save`` into the blobs and the manifest
that a registry stores."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import tarfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from ..errors import PublishFailed
from ..registry import CONFIG_V1, LAYER_GZIP, MANIFEST_V2, Blob, PreparedImage
from .layer_cache import CompressedLayer, LayerCache

# Deflate level of the layers (zlib's default). Level and zlib version
# decide the bytes, so one image published again from the same machine gets
# the same digest.
GZIP_LEVEL = 6
CHUNK = 1024 * 1024
# The settings that decide the compressed bytes, as the key of the layer
# cache next to the diff_id. Another zlib version may give other bytes.
COMPRESSION = f"gzip level={GZIP_LEVEL} mtime=0 name='' zlib={zlib.ZLIB_RUNTIME_VERSION}"


def _file_digest(path: Path) -> str:
    with path.open("rb") as file:
        return "sha256:" + hashlib.file_digest(file, "sha256").hexdigest()


def prepare_image(
    archive: Path,
    folder: Path,
    cache: LayerCache | None = None,
    registry_has: Callable[[str], bool] | None = None,
    notify: Callable[[str], None] = lambda line: None,
) -> PreparedImage:
    """Turn an image archive of ``docker save`` into blobs and a manifest.

    The archive's ``manifest.json`` names the config and the layer tarballs,
    in the legacy layout of engine 20.10 (``ID/layer.tar``) as in the OCI
    layout of newer engines (``blobs/sha256/HEX``). Uncompressed layers are
    compressed with gzip without a time stamp or file name, so the same
    image gives the same blobs. Compressed layers are kept as they are.

    With a cache and registry_has (a HEAD of the blob in the target
    repository), an uncompressed layer whose compressed digest the cache
    stores and the registry has is not compressed: its Blob has no path.
    The manifest is the same bytes either way.
    """
    with tarfile.open(archive) as tar:
        entries = _read_json(tar, "manifest.json")
        if not isinstance(entries, list) or len(entries) != 1:
            raise PublishFailed(
                f"unexpected image archive from the Docker Engine: manifest.json "
                f"lists {len(entries) if isinstance(entries, list) else 'no'} images, "
                "expected 1"
            )
        entry = entries[0]
        config_path = folder / "config.json"
        _extract(tar, entry["Config"], config_path)
        config = Blob(
            _file_digest(config_path), config_path.stat().st_size, CONFIG_V1, config_path
        )
        diff_ids = _diff_ids(config_path, len(entry["Layers"]))
        reuse = _LayerReuse(cache, registry_has, notify) if cache is not None and registry_has else None
        layers = []
        done: dict[str, Blob] = {}
        for index, name in enumerate(entry["Layers"]):
            if name not in done:
                target = folder / f"layer-{index}.tar.gz"
                diff_id = diff_ids[index] if diff_ids else None
                reused = reuse.find(tar, name, diff_id) if reuse and diff_id else None
                done[name] = reused or _prepare_layer(tar, name, target, diff_id, cache, notify)
            layers.append(done[name])
    if cache is not None:
        cache.save()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_V2,
        "config": _descriptor(config),
        "layers": [_descriptor(layer) for layer in layers],
    }
    return PreparedImage(config, tuple(layers), json.dumps(manifest, indent=3).encode())


def _descriptor(blob: Blob) -> dict[str, Any]:
    return {"mediaType": blob.media_type, "size": blob.size, "digest": blob.digest}


def _member(tar: tarfile.TarFile, name: str) -> IO[bytes]:
    file = tar.extractfile(name)
    if file is None:
        raise PublishFailed(f"unexpected image archive: {name} is not a file")
    return file


def _read_json(tar: tarfile.TarFile, name: str) -> Any:
    with _member(tar, name) as file:
        return json.load(file)


def _extract(tar: tarfile.TarFile, name: str, target: Path) -> None:
    with _member(tar, name) as source, target.open("wb") as out:
        shutil.copyfileobj(source, out, CHUNK)


def _diff_ids(config_path: Path, count: int) -> list[str] | None:
    """Return the config's rootfs.diff_ids, or None unless there is one per layer."""
    with config_path.open("rb") as file:
        config = json.load(file)
    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != count:
        return None
    if not all(isinstance(diff_id, str) for diff_id in diff_ids):
        return None
    return diff_ids


def _is_gzip(tar: tarfile.TarFile, name: str) -> bool:
    with _member(tar, name) as source:
        return source.read(2) == b"\x1f\x8b"


class _LayerReuse:
    """The lookup of layers that need no compression, because the cache and the registry have them."""

    def __init__(
        self, cache: LayerCache, registry_has: Callable[[str], bool], notify: Callable[[str], None]
    ) -> None:
        self.cache = cache
        self.registry_has = registry_has
        self.notify = notify

    def find(self, tar: tarfile.TarFile, name: str, diff_id: str) -> Blob | None:
        # A layer that is compressed in the archive is pushed as it is, so
        # the cache, which stores what this module compressed, does not apply.
        if _is_gzip(tar, name):
            return None
        cached = self.cache.get(diff_id, COMPRESSION)
        if cached is None:
            return None
        if not self.registry_has(cached.digest):
            self.notify(f"layer {diff_id}: the registry lacks the cached blob {cached.digest}, compressing")
            return None
        self.notify(
            f"layer {diff_id}: the registry has {cached.digest} ({cached.size / 1e6:.1f} MB), "
            "compression skipped (layer cache)"
        )
        return Blob(cached.digest, cached.size, LAYER_GZIP, None)


def _prepare_layer(
    tar: tarfile.TarFile,
    name: str,
    target: Path,
    diff_id: str | None,
    cache: LayerCache | None,
    notify: Callable[[str], None],
) -> Blob:
    started = time.monotonic()
    uncompressed = hashlib.sha256()
    with _member(tar, name) as source:
        compressed = source.read(2) == b"\x1f\x8b"
        source.seek(0)
        with target.open("wb") as out:
            if compressed:
                shutil.copyfileobj(source, out, CHUNK)
            else:
                with gzip.GzipFile(
                    filename="", mode="wb", fileobj=out, mtime=0, compresslevel=GZIP_LEVEL
                ) as packed:
                    while chunk := source.read(CHUNK):
                        uncompressed.update(chunk)
                        packed.write(chunk)
    blob = Blob(_file_digest(target), target.stat().st_size, LAYER_GZIP, target)
    if compressed:
        return blob
    notify(
        f"compressed layer {diff_id or name} to {blob.digest} ({blob.size / 1e6:.1f} MB) "
        f"in {time.monotonic() - started:.1f} s"
    )
    # The cache is keyed by the config's diff_id, so it records a layer only
    # when its content has that digest.
    if cache is not None and diff_id == "sha256:" + uncompressed.hexdigest():
        cache.put(diff_id, COMPRESSION, CompressedLayer(blob.digest, blob.size))
    return blob
