"""After the upload: every remote file's size and sha256 (git blob sha1 for small files) against the local file."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubtools.errors import PublishError
from hubtools.publishing.plan import PlannedFile, UploadPlan

HASH_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class ProgressEvent:
    """Progress report: `stage` is "hash" or "upload"; bytes are cumulative within the stage."""

    stage: str
    path: str
    bytes_done: int
    bytes_total: int


def hash_files(plan: UploadPlan, progress: Callable[[ProgressEvent], None] | None) -> dict[str, str]:
    """sha256 of every planned file, by path in the repo (each file is read once per run)."""
    digests, done = {}, 0
    for f in plan.files:
        digests[f.path] = hexdigest(hashlib.sha256(), f.local)
        done += f.size
        if progress:
            progress(ProgressEvent("hash", f.path, done, plan.total_bytes))
    return digests


def hexdigest(digest: Any, path: Path) -> str:
    with path.open("rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return str(digest.hexdigest())


def difference(f: PlannedFile, sha256: str, remote: Any) -> tuple[str, str] | None:
    """None when the remote file equals the local one, else (expected, found) descriptions.

    LFS files are compared by size and sha256, regular files by size and git blob sha1 (what the Hub reports).
    """
    if remote is not None and getattr(remote, "lfs", None) is not None:
        expected, found = f"size {f.size}, sha256 {sha256}", f"size {remote.lfs.size}, sha256 {remote.lfs.sha256}"
    elif remote is not None and hasattr(remote, "blob_id"):
        blob = hexdigest(hashlib.sha1(b"blob %d\0" % f.size), f.local)
        expected, found = f"size {f.size}, git blob sha1 {blob}", f"size {remote.size}, git blob sha1 {remote.blob_id}"
    else:
        return f"size {f.size}, sha256 {sha256}", "no such file"
    return None if expected == found else (expected, found)


def verify_remote(plan: UploadPlan, digests: dict[str, str], remote: dict[str, Any]) -> None:
    for f in plan.files:
        if found := difference(f, digests[f.path], remote.get(f.path)):
            raise PublishError(
                f"remote file '{f.path}' does not match the local file after upload "
                f"(expected {found[0]}; found {found[1]}). Re-run to re-upload."
            )
