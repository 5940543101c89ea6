"""Checking a downloaded file against the checksums GCS stores for the object.

GCS reports crc32c (always) and md5 (not for composite objects) as base64 of the
big-endian digest. We hash the file as written to disk, so what is checked is exactly
what the model loader will read.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

import google_crc32c

_READ_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Expected:
    """What a file must be: its size and the object's checksums (base64, as GCS gives them)."""

    size: int
    crc32c: str | None = None
    md5: str | None = None


def file_checksums(path: Path, crc32c: bool = True, md5: bool = False) -> dict[str, str]:
    """The file's crc32c and/or md5 in GCS's base64 form, in one pass over the file."""
    crc = google_crc32c.Checksum() if crc32c else None
    digest = hashlib.md5(usedforsecurity=False) if md5 else None
    with path.open("rb") as file:
        while chunk := file.read(_READ_BYTES):
            if crc is not None:
                crc.update(chunk)
            if digest is not None:
                digest.update(chunk)
    result = {}
    if crc is not None:
        result["crc32c"] = base64.b64encode(crc.digest()).decode()
    if digest is not None:
        result["md5"] = base64.b64encode(digest.digest()).decode()
    return result


def mismatch(path: Path, expected: Expected, against: str = "GCS") -> str | None:
    """None if the file matches; otherwise a sentence saying what differs (``against`` names
    where the expected values come from).

    crc32c is preferred (GCS always has it); md5 is the fallback. A file with neither
    checksum available is checked by size only.
    """
    size = path.stat().st_size
    if size != expected.size:
        return f"size is {size} bytes, {against} says {expected.size}"
    if expected.crc32c is None and expected.md5 is None:
        return None
    use_crc = expected.crc32c is not None
    actual = file_checksums(path, crc32c=use_crc, md5=not use_crc)
    kind, want = ("crc32c", expected.crc32c) if use_crc else ("md5", expected.md5)
    if actual[kind] != want:
        return f"{kind} of the downloaded bytes is {actual[kind]}, {against} says {want}"
    return None
