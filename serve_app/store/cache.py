"""The persistent, per-machine cache of downloaded model versions.

Layout under the cache directory::

    gcs/<bucket>/<prefix-slug>-<hash>/      one repository (a gs:// URI)
        <version>/                          a complete, verified version; appears atomically
            model/...                       the files, as in the bucket (what loaders read)
            manifest.json                   uri, version, files with sizes and checksums
            last_used                       its mtime is the LRU clock
        <version>.lease                     shared flock by every replica using the version
        <version>.download.lock             exclusive flock by the one process downloading it
    tmp/                                    downloads in progress and evicted versions being
                                            deleted; same filesystem, so renames are atomic
    evict.lock                              one evictor at a time

A version directory exists only once complete: it is built in ``tmp/`` and renamed into
place. Replicas hold a shared lease on the version they serve for their whole life; the
evictor takes the lease exclusively without waiting, so a version in use is never evicted,
and a replica that dies releases its lease with its process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_app.errors import ModelLoadError
from serve_app.store.gcs_paths import VERSION_DIR, relative_object_path
from serve_app.store.locks import FileLock, locked, try_locked
from serve_app.store.progress import human_bytes

logger = logging.getLogger("ray.serve")

CACHE_DIR_ENV = "SERVE_APP_CACHE_DIR"
MODEL_DIR = "model"
MANIFEST = "manifest.json"
LAST_USED = "last_used"
_TRASH = "trash."


def resolve_cache_dir(configured: str | None = None) -> Path:
    """The cache directory: the config's ``store.cache_dir``, else ``$SERVE_APP_CACHE_DIR``,
    else ``serve-app`` under the user's cache directory (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    chosen = configured or os.environ.get(CACHE_DIR_ENV)
    if chosen:
        return Path(chosen).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "serve-app"


@dataclass(frozen=True)
class CachedVersion:
    """A complete version in the cache."""

    path: Path
    uri: str
    version: int
    size: int
    last_used: float

    @property
    def model_dir(self) -> Path:
        """The directory a model loader reads."""
        return self.path / MODEL_DIR

    @property
    def lease_path(self) -> Path:
        return self.path.parent / f"{self.version}.lease"


class ModelCache:
    """The cache directory of one machine, shared by every replica on it."""

    def __init__(self, root: Path, max_bytes: int | None = None) -> None:
        self.root = root
        self.max_bytes = max_bytes
        try:
            (root / "tmp").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ModelLoadError(f"cannot create the model cache directory {root}: {exc}") from None

    def repository(self, key: tuple[str, str]) -> RepositoryCache:
        """The cache of one repository; ``key`` is two checked path segments."""
        return RepositoryCache(self, self.root / "gcs" / key[0] / key[1])

    def versions(self) -> list[CachedVersion]:
        """Every complete version in the cache, whatever repository it belongs to."""
        found = []
        for version_dir in self.root.glob("gcs/*/*/*"):
            if VERSION_DIR.match(version_dir.name) and version_dir.is_dir():
                entry = read_entry(version_dir)
                if entry is not None:
                    found.append(entry)
        return found

    def make_room(self, incoming: int = 0) -> None:
        """Evict least recently used versions no replica holds, until ``incoming`` more bytes fit.

        Versions in use stay, even if that leaves the cache over its limit: serving wins
        over the limit, and the overrun is logged.
        """
        if self.max_bytes is None:
            return
        with locked(self.root / "evict.lock"):
            self._remove_trash()
            entries = sorted(self.versions(), key=lambda e: e.last_used)
            total = sum(e.size for e in entries)
            for entry in entries:
                if total + incoming <= self.max_bytes:
                    break
                if self._evict(entry):
                    total -= entry.size
            if total + incoming > self.max_bytes:
                logger.warning(
                    "model cache %s needs %s but its limit is %s: the versions left are in use",
                    self.root,
                    human_bytes(total + incoming),
                    human_bytes(self.max_bytes),
                )

    def _evict(self, entry: CachedVersion) -> bool:
        with try_locked(entry.lease_path) as unused:
            if not unused:
                return False
            # Rename first: the version disappears at once, deletion can take its time.
            trash = self.new_tmp_dir(_TRASH)
            os.rename(entry.path, trash)
        shutil.rmtree(trash, ignore_errors=True)
        logger.info(
            "evicted %s version %d (%s, last used %s) from the model cache",
            entry.uri,
            entry.version,
            human_bytes(entry.size),
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.last_used)),
        )
        return True

    def new_tmp_dir(self, prefix: str) -> Path:
        """A unique, not yet existing path in ``tmp/`` (same filesystem as the versions)."""
        return self.root / "tmp" / f"{prefix}{os.getpid()}.{uuid.uuid4().hex[:12]}"

    def _remove_trash(self) -> None:
        # Left over when a process died while deleting an evicted or damaged version.
        for path in (self.root / "tmp").glob(f"{_TRASH}*"):
            shutil.rmtree(path, ignore_errors=True)


class RepositoryCache:
    """The cached versions of one repository, and the locks that guard them."""

    def __init__(self, cache: ModelCache, path: Path) -> None:
        self.cache = cache
        self.path = path

    def lease(self, version: int) -> FileLock:
        """A shared lock that keeps ``version`` from eviction until released (or process exit)."""
        lease = FileLock(self.path / f"{version}.lease", shared=True)
        lease.acquire()
        return lease

    @contextmanager
    def download_lock(self, version: int, label: str) -> Iterator[None]:
        """The right to download ``version``; other processes wait here, then reuse the result."""
        waiting = f"{label}: another process is downloading it; waiting to reuse its download"
        with locked(self.path / f"{version}.download.lock", waiting_message=waiting):
            self._remove_stale_staging(version)
            yield

    def lookup(self, version: int) -> CachedVersion | None:
        """The complete cached ``version`` (and mark it used now), or None if absent or damaged."""
        entry = read_entry(self.path / str(version))
        if entry is None:
            return None
        problem = _damage(entry)
        if problem:
            logger.warning("cached %s version %d is damaged (%s)", entry.uri, version, problem)
            return None
        _touch(entry.path / LAST_USED)
        return entry

    def cached_versions(self) -> list[int]:
        """Versions with a complete copy here, ascending (used when GCS cannot be reached)."""
        if not self.path.is_dir():
            return []
        return sorted(
            int(child.name)
            for child in self.path.iterdir()
            if VERSION_DIR.match(child.name) and (child / MANIFEST).is_file()
        )

    def discard(self, version: int) -> None:
        """Remove a damaged copy of ``version`` (call with its download lock held)."""
        path = self.path / str(version)
        if path.exists():
            trash = self.cache.new_tmp_dir(_TRASH)
            os.rename(path, trash)
            shutil.rmtree(trash, ignore_errors=True)

    @contextmanager
    def staging(self, version: int) -> Iterator[Path]:
        """A fresh directory to download into; removed unless ``commit`` moved it into place."""
        staging = self.cache.new_tmp_dir(self._staging_prefix(version))
        (staging / MODEL_DIR).mkdir(parents=True)
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def commit(self, staging: Path, uri: str, version: int, files: list[dict[str, Any]]) -> Path:
        """Write the manifest and rename the staged version into place, atomically."""
        manifest = {
            "format": 1,
            "uri": uri,
            "version": version,
            "total_bytes": sum(f["size"] for f in files),
            "files": files,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        (staging / LAST_USED).touch()
        self.path.mkdir(parents=True, exist_ok=True)
        target = self.path / str(version)
        os.rename(staging, target)  # atomic on one filesystem; readers see all or nothing
        return target

    def _staging_prefix(self, version: int) -> str:
        return f"{self.path.parent.name}.{self.path.name}.{version}."

    def _remove_stale_staging(self, version: int) -> None:
        # We hold the download lock: a staging directory of this version is a dead download.
        prefix = self._staging_prefix(version)
        for path in (self.cache.root / "tmp").glob(f"{prefix}*"):
            if path.name.startswith(prefix):
                shutil.rmtree(path, ignore_errors=True)


def read_entry(version_dir: Path) -> CachedVersion | None:
    """The version stored at ``version_dir`` from its manifest; None if absent or unreadable."""
    try:
        manifest = json.loads((version_dir / MANIFEST).read_text())
        last_used = (version_dir / LAST_USED).stat().st_mtime
        version = int(version_dir.name)
        if int(manifest["version"]) != version:
            return None
        return CachedVersion(
            path=version_dir,
            uri=str(manifest["uri"]),
            version=version,
            size=int(manifest["total_bytes"]),
            last_used=last_used,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def manifest_files(entry: CachedVersion) -> list[dict[str, Any]]:
    """The file records of a cached version's manifest."""
    return json.loads((entry.path / MANIFEST).read_text())["files"]


def _damage(entry: CachedVersion) -> str | None:
    """A cheap check on reuse: every file of the manifest is there with its size."""
    try:
        files = manifest_files(entry)
        for record in files:
            relative = relative_object_path(str(record["path"]), "")
            if relative is None:
                return f"bad path {record['path']!r} in its manifest"
            size = (entry.model_dir / relative).stat().st_size
            if size != int(record["size"]):
                return f"{relative} is {size} bytes, expected {record['size']}"
    except (OSError, ValueError, KeyError, TypeError, ModelLoadError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _touch(path: Path) -> None:
    # A read-only, pre-filled cache still serves; it just keeps no LRU clock.
    with contextlib.suppress(OSError):
        path.touch()
