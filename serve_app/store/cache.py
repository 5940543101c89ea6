"""The persistent, per-machine cache of downloaded model versions.

Layout under the cache directory::

    gcs/<bucket>/<prefix-slug>-<hash>/      one repository (a gs:// URI)
        <version>/                          a complete, verified version; appears atomically
            model/...                       the files, as in the bucket (what loaders read)
            manifest.json                   uri, version, files with sizes and checksums
            last_used                       its mtime is the LRU clock
            committed                       every byte above was fsynced before the version
                                            appeared (see "Crashes and power loss" below)
        <version>.lease                     shared flock by every replica using the version
        <version>.download.lock             exclusive flock by the one process downloading it
    tmp/                                    downloads in progress and evicted versions being
                                            deleted; same filesystem, so renames are atomic
    evict.lock                              one evictor at a time

A version directory exists only once complete: it is built in ``tmp/`` and renamed into
place. Replicas hold a shared lease on the version they serve for their whole life; the
evictor takes the lease exclusively without waiting, so a version in use is never evicted,
and a replica that dies releases its lease with its process.

Crashes and power loss. A version is committed durably: its files, manifest and
directories are fsynced before the rename, and the receiving directories after it, so a
version that exists after a power loss has all its bytes. The ``committed`` marker says a
version was written that way. A version without it (written before commits were fsynced,
so its files may be the right size but full of zeros after a power loss) has every file's
checksum checked before it is reused; it is then flushed and marked, or discarded and
downloaded again. A process killed mid-way (``kill -9``) leaves a staging directory or a
trash directory in ``tmp/``: opening the cache removes every one no live process owns.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_app.errors import ModelLoadError
from serve_app.store.durable import create_durably, fsync_path, fsync_tree, fsync_up_to
from serve_app.store.gcs_paths import VERSION_DIR, relative_object_path
from serve_app.store.integrity import Expected, mismatch
from serve_app.store.locks import FileLock, locked, try_locked
from serve_app.store.progress import human_bytes

logger = logging.getLogger("ray.serve")

CACHE_DIR_ENV = "SERVE_APP_CACHE_DIR"
MODEL_DIR = "model"
MANIFEST = "manifest.json"
LAST_USED = "last_used"
COMMITTED = "committed"
_TRASH = "trash."
# Exactly what new_tmp_dir(_TRASH) makes: a staging directory of a bucket named "trash"
# ("trash.<slug>-<hash>.<version>.<pid>.<id>") never matches, so it is never taken for trash.
_TRASH_NAME = re.compile(r"^trash\.[0-9]+\.[0-9a-f]{12}$")


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
        self.remove_leftovers()

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
        # Left over when a process died while deleting an evicted or damaged version. Two
        # processes deleting the same trash at once is harmless: each ignores what is gone.
        for path in (self.root / "tmp").glob(f"{_TRASH}*"):
            if _TRASH_NAME.match(path.name):
                shutil.rmtree(path, ignore_errors=True)

    def remove_leftovers(self) -> None:
        """Remove what killed processes left in ``tmp/``: trash, and staging directories of
        downloads that no live process runs (the download lock of their version is free)."""
        self._remove_trash()
        tmp = self.root / "tmp"
        try:
            staged = [p.name for p in tmp.iterdir()]
        except OSError:  # a read-only, pre-filled cache has nothing to clean
            return
        if not staged:
            return
        for repo_dir in self.root.glob("gcs/*/*"):
            repo = RepositoryCache(self, repo_dir)
            versions = {repo.staging_version(name) for name in staged}
            for version in sorted(v for v in versions if v is not None):
                try:
                    with try_locked(repo.download_lock_path(version)) as unused:
                        if unused:  # nobody downloads this version: its staging is dead
                            repo.remove_stale_staging(version)
                except OSError as exc:  # e.g. a read-only cache: leave it, do not fail the start
                    logger.warning("cannot clean the model cache's %s: %s", tmp, exc)


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
        with locked(self.download_lock_path(version), waiting_message=waiting):
            self.remove_stale_staging(version)
            yield

    def download_lock_path(self, version: int) -> Path:
        """The lock file held exclusively by whoever downloads ``version``."""
        return self.path / f"{version}.download.lock"

    def lookup(self, version: int) -> CachedVersion | None:
        """The complete cached ``version`` (and mark it used now), or None if absent or damaged.

        A version not known to be durably committed has its checksums checked first.
        """
        entry = read_entry(self.path / str(version))
        if entry is None:
            return None
        problem = _damage(entry)
        if problem is None and not (entry.path / COMMITTED).is_file():
            problem = _verify_uncommitted(entry)
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
            if VERSION_DIR.match(child.name) and read_entry(child) is not None
        )

    def discard(self, version: int) -> None:
        """Remove a damaged copy of ``version`` (call with its download lock held)."""
        path = self.path / str(version)
        if path.exists():
            trash = self.cache.new_tmp_dir(_TRASH)
            os.rename(path, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def discard_unused(self, version: int, label: str) -> bool:
        """Remove the copy of ``version`` unless some process holds a lease on it (it serves
        that copy); whether it is gone. Takes the version's download lock meanwhile."""
        with self.download_lock(version, label), try_locked(self.path / f"{version}.lease") as free:
            if free:
                self.discard(version)
            return free

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
        """Write the manifest and rename the staged version into place, atomically and durably.

        Everything staged is flushed to disk before the rename, so a version that exists after
        a power loss has all its bytes; the directories receiving it are flushed after.
        """
        manifest = {
            "format": 1,
            "uri": uri,
            "version": version,
            "total_bytes": sum(f["size"] for f in files),
            "files": files,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        (staging / LAST_USED).touch()
        (staging / COMMITTED).touch()  # true once the flush below returns, before the rename
        fsync_tree(staging)
        self.path.mkdir(parents=True, exist_ok=True)
        target = self.path / str(version)
        os.rename(staging, target)  # atomic on one filesystem; readers see all or nothing
        fsync_up_to(self.path, self.cache.root)  # the rename, and any directory made for it
        fsync_path(self.cache.root / "tmp")  # the staging name is gone for good too
        return target

    def _staging_base(self) -> str:
        return f"{self.path.parent.name}.{self.path.name}."

    def _staging_prefix(self, version: int) -> str:
        return f"{self._staging_base()}{version}."

    def staging_version(self, name: str) -> int | None:
        """The version a staging directory named ``name`` belongs to, if it is one of ours."""
        base = self._staging_base()
        if not name.startswith(base):
            return None
        version = name[len(base) :].split(".", 1)[0]
        return int(version) if VERSION_DIR.match(version) else None

    def remove_stale_staging(self, version: int) -> None:
        """Remove staging directories of ``version`` (call with its download lock held: any
        such directory is then a dead download's)."""
        prefix = self._staging_prefix(version)
        for path in (self.cache.root / "tmp").glob(f"{prefix}*"):
            if path.name.startswith(prefix):
                shutil.rmtree(path, ignore_errors=True)


def read_entry(version_dir: Path) -> CachedVersion | None:
    """The version stored at ``version_dir`` from its manifest; None if absent or unreadable."""
    try:
        manifest = json.loads((version_dir / MANIFEST).read_text())
        try:
            last_used = (version_dir / LAST_USED).stat().st_mtime
        except FileNotFoundError:  # the LRU clock alone is no reason to download again
            last_used = (version_dir / MANIFEST).stat().st_mtime
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


def _verify_uncommitted(entry: CachedVersion) -> str | None:
    """Check every file of a version not known to be durably committed against its checksums.

    Such a version was written without fsync (older code): after a power loss its files can
    have the right size and hold zeros. Once every file matches, it is flushed and marked
    committed, so the check runs once. Returns what is wrong, or None.
    """
    try:
        for record in manifest_files(entry):
            relative = relative_object_path(str(record["path"]), "")
            if relative is None:
                return f"bad path {record['path']!r} in its manifest"
            expected = Expected(int(record["size"]), record.get("crc32c"), record.get("md5"))
            problem = mismatch(entry.model_dir / relative, expected, against="its manifest")
            if problem:
                return f"{relative}: {problem}"
    except (OSError, ValueError, KeyError, TypeError, ModelLoadError) as exc:
        return f"{type(exc).__name__}: {exc}"
    try:
        fsync_tree(entry.path)
        create_durably(entry.path / COMMITTED)
    except OSError as exc:  # a read-only cache: verified, served, checked again next time
        logger.info(
            "cannot mark cached %s version %d as committed: %s", entry.uri, entry.version, exc
        )
        return None
    logger.info(
        "cached %s version %d was not known to be committed: checksums verified, flushed to disk",
        entry.uri,
        entry.version,
    )
    return None


def _touch(path: Path) -> None:
    # A read-only, pre-filled cache still serves; it just keeps no LRU clock.
    with contextlib.suppress(OSError):
        path.touch()
