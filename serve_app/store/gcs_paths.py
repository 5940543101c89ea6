"""``gs://`` URIs and object names, checked before any of them becomes a local path.

Object names come from the bucket, which we do not control: a name such as
``model/1/../../etc/passwd`` must never write outside the cache. Every name is checked
relative to the version's prefix, segment by segment, before it is joined to a directory.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from serve_app.errors import ModelLoadError

# GCS bucket naming rules: 3-63 characters (up to 222 with dots), lowercase letters, digits,
# dashes, underscores and dots, starting and ending with a letter or digit.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
VERSION_DIR = re.compile(r"^[0-9]{1,18}$")
_SLUG_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_SEGMENT_BYTES = 255  # longest file name most local filesystems accept


@dataclass(frozen=True)
class GcsLocation:
    """A model repository in GCS: a bucket and a prefix (no leading or trailing slash)."""

    bucket: str
    prefix: str

    @property
    def uri(self) -> str:
        """The canonical ``gs://bucket/prefix`` form used in messages and cache keys."""
        return f"gs://{self.bucket}/{self.prefix}" if self.prefix else f"gs://{self.bucket}"

    def dir_prefix(self, *parts: str) -> str:
        """The object-name prefix of a "directory" under the repository, ending in ``/``."""
        joined = "/".join(p for p in (self.prefix, *parts) if p)
        return f"{joined}/" if joined else ""

    def cache_key(self) -> tuple[str, str]:
        """Two safe path segments: the bucket and a readable slug of the prefix plus its hash.

        The hash keeps distinct prefixes apart even when their slugs collide
        (``a/b`` and ``a_b``); the slug keeps the cache directory readable.
        """
        digest = hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        slug = _SLUG_UNSAFE.sub("_", self.prefix.replace("/", "__"))[:80] or "_root"
        return self.bucket, f"{slug}-{digest}"


def parse_gcs_uri(uri: str) -> GcsLocation:
    """Split ``gs://bucket/prefix`` into a checked bucket and prefix; ModelLoadError if bad."""
    if not uri.startswith("gs://"):
        raise ModelLoadError(f"not a gs:// URI: {uri!r}")
    bucket, _, prefix = uri[len("gs://") :].partition("/")
    if not _BUCKET.match(bucket):
        raise ModelLoadError(
            f"invalid bucket name {bucket!r} in {uri} (3-222 characters: a-z, 0-9, '.', '_', '-',"
            " starting and ending with a letter or digit)"
        )
    prefix = prefix.strip("/")
    if prefix:
        bad = [s for s in prefix.split("/") if s in ("", ".", "..")]
        if bad:
            raise ModelLoadError(
                f"invalid prefix in {uri}: empty, '.' or '..' path segments are not allowed"
            )
    return GcsLocation(bucket, prefix)


def relative_object_path(name: str, base: str) -> PurePosixPath | None:
    """The path of object ``name`` inside the directory ``base`` (an object-name prefix).

    Returns None for "folder" placeholder objects (names ending in ``/``). Raises
    ModelLoadError for any name that could escape the directory or cannot be a file name:
    outside ``base``, absolute, empty, ``.`` or ``..`` segments, backslashes, NUL bytes.
    """
    if not name.startswith(base):
        raise ModelLoadError(f"object {name!r} is not under {base!r}")
    relative = name[len(base) :]
    if relative == "" or relative.endswith("/"):
        return None
    segments = relative.split("/")
    for segment in segments:
        if segment in ("", ".", "..") or "\\" in segment or "\x00" in segment:
            raise ModelLoadError(
                f"refusing object {name!r}: its name has an empty, '.', '..', backslash or NUL"
                " path segment, so it cannot be stored safely"
            )
        if len(segment.encode()) > _MAX_SEGMENT_BYTES:
            raise ModelLoadError(f"refusing object {name!r}: a path segment is too long")
    return PurePosixPath(*segments)


def check_no_conflicts(paths: list[PurePosixPath], where: str) -> None:
    """Refuse a listing in which one object's path is another's directory (``a`` and ``a/b``)."""
    files = set(paths)
    if len(files) != len(paths):
        raise ModelLoadError(f"{where} lists the same file twice")
    for path in paths:
        for parent in path.parents:
            if parent in files:
                raise ModelLoadError(
                    f"{where} has both a file '{parent}' and a file '{path}' inside it"
                )
