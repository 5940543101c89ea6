"""Model repositories in Google Cloud Storage, read through the persistent local cache.

``gs://bucket/prefix`` holds ``<prefix>/<version>/...`` as in TF Serving. A version is
downloaded once per machine: listed, fetched with parallel (and, for large objects,
sliced) transfers into a staging directory, checked against the objects' crc32c/md5,
and renamed into the cache. Replicas that start later, or restart, reuse it without
downloading a byte. While GCS cannot be listed, the cached versions are offered instead
(and the model's status says so); the next listing that works ends that, so versions
that are not cached can be downloaded again.

Credentials are Application Default Credentials (on GKE: Workload Identity). With
``STORAGE_EMULATOR_HOST`` set, the client talks to that emulator, anonymously.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from serve_app.config import StoreSpec
from serve_app.errors import ModelLoadError
from serve_app.store.base import ModelStore
from serve_app.store.cache import ModelCache, resolve_cache_dir
from serve_app.store.gcs_paths import (
    VERSION_DIR,
    check_no_conflicts,
    parse_gcs_uri,
    relative_object_path,
)
from serve_app.store.integrity import Expected
from serve_app.store.locks import FileLock
from serve_app.store.progress import Progress, human_bytes
from serve_app.store.retries import describe, is_transient, listing_retry
from serve_app.store.transfer import (
    REQUEST_TIMEOUT,
    SLICE_BYTES,
    Downloader,
    RemoteObject,
    widen_connection_pool,
)

logger = logging.getLogger("ray.serve")

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"


class GCSStore(ModelStore):
    """``gs://bucket/prefix``: versions listed in GCS, fetched into the local cache."""

    def __init__(
        self, uri: str, settings: StoreSpec | None = None, slice_bytes: int = SLICE_BYTES
    ) -> None:
        super().__init__(uri)
        self.location = parse_gcs_uri(uri)
        self.settings = settings or StoreSpec()
        self.slice_bytes = slice_bytes
        self.cache = ModelCache(
            resolve_cache_dir(self.settings.cache_dir), self.settings.max_cache_bytes
        )
        self.repo = self.cache.repository(self.location.cache_key())
        # Set when the model is served from the cache because GCS could not be reached.
        self.notice = ""
        self._offline_reason: str | None = None
        self._version_dirs: dict[int, str] | None = None
        self._client: Any = None
        # Shared leases on the fetched versions, held while the replica serves them.
        self._leases: dict[int, FileLock] = {}

    # --- ModelStore --------------------------------------------------------------------

    def list_versions(self) -> list[int]:
        """The versions in GCS; while GCS cannot be reached, the cached ones (see ``notice``)."""
        try:
            self._version_dirs = self._remote_version_dirs()
        except ModelLoadError:
            raise
        except Exception as exc:
            if not _unreachable(exc):
                raise ModelLoadError(f"cannot list {self.location.uri}: {describe(exc)}") from None
            return self._cached_instead(exc)
        if self._offline_reason:  # reachable again: uncached versions can be downloaded
            logger.info("%s is reachable again", self.location.uri)
        self._offline_reason = None
        self.notice = ""
        return sorted(self._version_dirs)

    def notice_for(self, version: int) -> str:
        if not self._offline_reason:
            return ""
        return (
            f"serving version {version} from cache: {self.location.uri} is unreachable"
            f" ({self._offline_reason})"
        )

    def fetch(self, version: int) -> Path:
        """The local directory of ``version``, from the cache or downloaded into it.

        Takes a lease on the version (so no other process evicts it) that ``release`` drops;
        if the fetch fails, the lease it took is dropped here.
        """
        leased = version in self._leases
        if not leased:  # before looking: an evictor cannot remove it now
            self._leases[version] = self.repo.lease(version)
        try:
            return self._fetch(version)
        except BaseException:
            if not leased:
                self.release(version)
            raise

    def _fetch(self, version: int) -> Path:
        uri = self.location.uri
        entry = self.repo.lookup(version)
        if entry is not None:
            self.notice = self.notice_for(version)
            logger.info("%s version %d: using the cached copy at %s", uri, version, entry.path)
            self.last_fetch_cached = True
            return entry.model_dir
        if self._version_dirs is None and not self._offline_reason:
            self.list_versions()
        if self._offline_reason or self._version_dirs is None:
            raise ModelLoadError(
                f"version {version} of {uri} is not in the cache at {self.cache.root} and {uri}"
                f" is unreachable ({self._offline_reason})"
            )
        if version not in self._version_dirs:
            raise ModelLoadError(f"version {version} not found in {uri}")
        label = f"{uri} version {version}"
        with self.repo.download_lock(version, label):
            entry = self.repo.lookup(version)  # another replica may have finished it meanwhile
            if entry is not None:
                logger.info("%s: reusing the copy another process downloaded", label)
                self.last_fetch_cached = True
                return entry.model_dir
            self.repo.discard(version)  # a damaged copy, if lookup found one
            path = self._download(version, label)
            self.last_fetch_cached = False
        self.cache.make_room()
        return path

    def release(self, version: int) -> None:
        lease = self._leases.pop(version, None)
        if lease is not None:
            lease.release()

    def discard(self, version: int) -> None:
        """A copy of ``version`` failed to load: drop it from the cache and list GCS again
        before the next fetch, so a version copied while its upload was still in progress is
        downloaded whole once the upload completes (by the retry, or by a replica that starts
        later). A copy another replica serves is kept; so is every copy while GCS cannot be
        reached, since nothing could replace it."""
        self._version_dirs = None
        if self._offline_reason or version in self._leases:
            return
        label = f"{self.location.uri} version {version}"
        try:
            dropped = self.repo.discard_unused(version, label)
        except OSError as exc:  # e.g. a read-only, pre-filled cache: the retry reuses it
            logger.warning("%s failed to load; cannot drop its cached copy: %s", label, exc)
            return
        if dropped:
            logger.info("%s failed to load: its cached copy is dropped, to be listed again", label)

    # --- listing -----------------------------------------------------------------------

    def subdirectories(self) -> list[str]:
        """The names of the directories directly under the URI (a pool's models)."""
        return self._list_directory()[1]

    def _list_directory(self) -> tuple[bool, list[str]]:
        """Whether objects lie directly under the URI, and its subdirectories' names."""
        loc = self.location
        base = loc.dir_prefix()
        try:
            listing = self._gcs().list_blobs(
                loc.bucket,
                prefix=base,
                delimiter="/",
                retry=listing_retry(self.settings.retry_timeout_s, self._log_retry),
                timeout=REQUEST_TIMEOUT,
            )
            # Every page, to its end: .prefixes grows page by page, and a page holds at most
            # 1,000 entries, objects and prefixes together. Stopping at the first object
            # (a console "folder" placeholder is one) would lose the later pages' directories.
            files = sum(page.num_items for page in listing.pages)
            subdirs = [p[len(base) :].rstrip("/") for p in listing.prefixes]
        except Exception as exc:
            raise _answer_error(exc, loc.uri, loc.bucket) from None
        return files > 0, subdirs

    def _remote_version_dirs(self) -> dict[int, str]:
        """Version -> its directory name (``00000123`` stays as written); {1: ""} if unversioned."""
        loc = self.location
        has_files, subdirs = self._list_directory()
        if not has_files and not subdirs:
            raise ModelLoadError(f"{loc.uri} not found (no objects under it)")
        versions: dict[int, str] = {}
        for name in sorted(subdirs):
            if VERSION_DIR.match(name):
                if int(name) in versions:
                    raise ModelLoadError(
                        f"{loc.uri} has two directories for version {int(name)}:"
                        f" '{versions[int(name)]}' and '{name}'"
                    )
                versions[int(name)] = name
        return versions or {1: ""}

    def _list_objects(self, version_dir: str) -> list[RemoteObject]:
        """Every object of one version, with names checked before they become paths."""
        loc = self.location
        base = loc.dir_prefix(version_dir)
        try:
            blobs = list(
                self._gcs().list_blobs(
                    loc.bucket,
                    prefix=base,
                    retry=listing_retry(self.settings.retry_timeout_s, self._log_retry),
                    timeout=REQUEST_TIMEOUT,
                )
            )
        except Exception as exc:
            raise _answer_error(exc, loc.uri, loc.bucket) from None
        objects = []
        for blob in blobs:
            path = relative_object_path(blob.name, base)
            if path is None:
                continue
            if (blob.content_encoding or "").lower() == "gzip":
                raise ModelLoadError(
                    f"gs://{loc.bucket}/{blob.name} is stored gzip-encoded (Content-Encoding:"
                    " gzip); upload model files without gzip transcoding (no gsutil -z/-Z)"
                )
            expected = Expected(int(blob.size or 0), blob.crc32c, blob.md5_hash)
            objects.append(RemoteObject(blob.name, path, blob.generation, expected))
        if not objects:
            raise ModelLoadError(f"gs://{loc.bucket}/{base} not found (no objects under it)")
        check_no_conflicts([o.path for o in objects], f"gs://{loc.bucket}/{base}")
        return objects

    def _cached_instead(self, exc: Exception) -> list[int]:
        """GCS cannot be reached: offer the cached versions, or fail saying why."""
        reason = describe(exc)
        cached = self.repo.cached_versions()
        if not cached:
            raise ModelLoadError(
                f"{self.location.uri} is unreachable ({reason}), and no version of it is"
                f" cached in {self.cache.root}"
            )
        self._offline_reason = reason
        logger.warning(
            "%s is unreachable (%s); choosing among the cached versions %s",
            self.location.uri,
            reason,
            cached,
        )
        return cached

    # --- download ----------------------------------------------------------------------

    def _download(self, version: int, label: str) -> Path:
        """Download, verify and cache one version; the path of its model directory."""
        assert self._version_dirs is not None
        objects = self._list_objects(self._version_dirs[version])
        total = sum(o.expected.size for o in objects)
        self.cache.make_room(total)
        free = shutil.disk_usage(self.cache.root).free
        if free < total:  # fail now, clearly, rather than with ENOSPC halfway through
            raise ModelLoadError(
                f"{label} needs {human_bytes(total)} but only {human_bytes(free)} is free in"
                f" the model cache {self.cache.root}"
            )
        loc, workers = self.location, self.settings.download_workers
        logger.info(
            "%s: downloading %d file(s), %s, with up to %d parallel transfers into %s",
            label,
            len(objects),
            human_bytes(total),
            workers,
            self.cache.root,
        )
        progress = Progress(label, total)
        downloader = Downloader(
            self._gcs(), loc.bucket, workers, self.settings.retry_timeout_s, self.slice_bytes
        )
        with self.repo.staging(version) as staging:
            downloader.download_verified(objects, staging / "model", progress, label)
            path = self.repo.commit(staging, loc.uri, version, [o.record() for o in objects])
        logger.info("%s (%d file(s), checksums verified)", progress.summary(), len(objects))
        return path / "model"

    # --- helpers -----------------------------------------------------------------------

    def _gcs(self) -> Any:
        """The storage client, made on first use (so credential errors surface as load errors)."""
        if self._client is None:
            from google.cloud import storage

            if os.environ.get(EMULATOR_ENV):
                from google.auth.credentials import AnonymousCredentials

                client = storage.Client(project=None, credentials=AnonymousCredentials())
            else:
                client = storage.Client(project=None)  # Application Default Credentials
            widen_connection_pool(client, self.settings.download_workers)
            self._client = client
        return self._client

    def _log_retry(self, exc: Exception) -> None:
        logger.warning("%s: %s; retrying", self.location.uri, describe(exc))


def _unreachable(exc: BaseException) -> bool:
    """GCS is down or cannot be reached from here (as opposed to answering with an error)."""
    from google.auth.exceptions import DefaultCredentialsError

    return is_transient(exc) or isinstance(exc, DefaultCredentialsError)


def _answer_error(exc: Exception, uri: str, bucket: str) -> Exception:
    """Turn GCS's definite answers into readable load errors; leave outages for the caller."""
    from google.api_core import exceptions as api_exceptions

    if isinstance(exc, api_exceptions.NotFound):
        return ModelLoadError(f"{uri} not found (bucket '{bucket}' does not exist)")
    if isinstance(exc, api_exceptions.Forbidden | api_exceptions.Unauthorized):
        return ModelLoadError(
            f"access to {uri} denied ({describe(exc)}): the replica's credentials need"
            " storage.objects.list and storage.objects.get on the bucket"
            " (roles/storage.objectViewer)"
        )
    return exc
