"""Turn an image archive of ``docker save`` into the blobs and the manifest
that a registry stores."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import tarfile
from pathlib import Path
from typing import IO, Any

from ..errors import PublishFailed
from ..registry import CONFIG_V1, LAYER_GZIP, MANIFEST_V2, Blob, PreparedImage

# Deflate level of the layers (zlib's default). Level and zlib version
# decide the bytes, so one image published again from the same machine gets
# the same digest.
GZIP_LEVEL = 6
CHUNK = 1024 * 1024


def _file_digest(path: Path) -> str:
    with path.open("rb") as file:
        return "sha256:" + hashlib.file_digest(file, "sha256").hexdigest()


def prepare_image(archive: Path, folder: Path) -> PreparedImage:
    """Turn an image archive of ``docker save`` into blobs and a manifest.

    The archive's ``manifest.json`` names the config and the layer tarballs,
    in the legacy layout of engine 20.10 (``ID/layer.tar``) as in the OCI
    layout of newer engines (``blobs/sha256/HEX``). Uncompressed layers are
    compressed with gzip without a time stamp or file name, so the same
    image gives the same blobs. Compressed layers are kept as they are.
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
        layers = []
        done: dict[str, Blob] = {}
        for index, name in enumerate(entry["Layers"]):
            if name not in done:
                done[name] = _prepare_layer(tar, name, folder / f"layer-{index}.tar.gz")
            layers.append(done[name])
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


def _prepare_layer(tar: tarfile.TarFile, name: str, target: Path) -> Blob:
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
                    shutil.copyfileobj(source, packed, CHUNK)
    return Blob(_file_digest(target), target.stat().st_size, LAYER_GZIP, target)
