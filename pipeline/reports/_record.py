"""The parts of the run record that several steps contribute to."""

from __future__ import annotations

from typing import Any

from ..results import StepResult
from ._common import find_step

# The run record, written last into the reports folder.
RECORD_FILE_NAME = "run.json"


def image_summary(results: list[StepResult]) -> dict[str, Any] | None:
    """Describe the image that the run built or scanned, or None without one.

    ``id`` is the image ID (the digest of its configuration) from the build,
    or from Trivy when the scan ran on an image passed with --image.
    ``digests`` lists registry digests, which a local build does not have.
    ``published``, present only after a publish pushed the image, gives the
    repository, digest, reference ``repository@sha256:...`` and tags.
    """
    build = find_step(results, "build")
    scan = find_step(results, "scan")
    built = build is not None and build.ok and build.image is not None
    scanned = scan is not None and scan.image is not None
    if not built and not scanned:
        return None
    scan_details = scan.details if scan is not None else {}
    if built:
        assert build is not None
        name = build.image
        image_id = build.details.get("image_id")
        tags = list(build.details.get("tags", [name]))
    else:
        assert scan is not None
        name = scan.image
        image_id = scan_details.get("image_id")
        tags = [name]
    summary: dict[str, Any] = {
        "name": name,
        "id": image_id or scan_details.get("image_id"),
        "tags": tags,
        "digests": list(scan_details.get("repo_digests", [])),
        "operating_system": scan_details.get("operating_system"),
    }
    published = published_summary(results)
    if published is not None:
        summary["published"] = published
    return summary


def published_summary(results: list[StepResult]) -> dict[str, Any] | None:
    """Describe what the publish step pushed, or None when it pushed nothing."""
    publish = find_step(results, "publish")
    if publish is None or not publish.ok or "digest" not in publish.details:
        return None
    return {
        key: publish.details[key]
        for key in ("environment", "repository", "digest", "reference", "tags")
    }
