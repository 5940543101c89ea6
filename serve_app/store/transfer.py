"""Moving a version's bytes from GCS to local files, verified.

Objects download in parallel; an object larger than one slice downloads as parallel
ranges written into place. A transfer that fails transiently resumes after the bytes it
already wrote, with bounded backoff. Once all bytes are on disk, each file is checked
against the object's crc32c/md5; a file that does not match is deleted and downloaded
again, a bounded number of times, and then the whole version is refused.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from serve_app.errors import ModelLoadError
from serve_app.store.integrity import Expected, mismatch
from serve_app.store.progress import Progress
from serve_app.store.retries import Backoff, describe, is_transient

logger = logging.getLogger("ray.serve")

SLICE_BYTES = 64 * 1024 * 1024  # objects larger than this download as parallel ranges
MAX_CHECKSUM_ATTEMPTS = 3
REQUEST_TIMEOUT = (10.0, 60.0)  # connect, and read (the longest silence between bytes)


@dataclass(frozen=True)
class RemoteObject:
    """One object of a version: its name, checked local path, generation and checksums."""

    name: str
    path: PurePosixPath
    generation: int | None
    expected: Expected

    def record(self) -> dict[str, Any]:
        """Its manifest entry."""
        return {
            "path": self.path.as_posix(),
            "object": self.name,
            "generation": self.generation,
            "size": self.expected.size,
            "crc32c": self.expected.crc32c,
            "md5": self.expected.md5,
        }


@dataclass
class Downloader:
    """Downloads objects of one bucket with a shared storage client."""

    client: Any
    bucket: str
    workers: int
    retry_timeout_s: float
    slice_bytes: int = SLICE_BYTES

    def download_verified(
        self, objects: list[RemoteObject], root: Path, progress: Progress, label: str
    ) -> None:
        """Download ``objects`` under ``root`` until every file matches its checksums."""
        pending = objects
        for attempt in range(1, MAX_CHECKSUM_ATTEMPTS + 1):
            self.download(pending, root, progress)
            with ThreadPoolExecutor(self._workers(len(pending))) as pool:
                problems = list(pool.map(lambda o: mismatch(root / o.path, o.expected), pending))
            failed = [(obj, problem) for obj, problem in zip(pending, problems) if problem]
            if not failed:
                return
            for obj, problem in failed:
                (root / obj.path).unlink(missing_ok=True)
                logger.warning(
                    "%s: gs://%s/%s is corrupted (%s); discarded it (attempt %d of %d)",
                    label,
                    self.bucket,
                    obj.name,
                    problem,
                    attempt,
                    MAX_CHECKSUM_ATTEMPTS,
                )
            pending = [obj for obj, _ in failed]
        obj, problem = failed[0]
        raise ModelLoadError(
            f"checksum mismatch: gs://{self.bucket}/{obj.name} is corrupted ({problem})"
            f" in {MAX_CHECKSUM_ATTEMPTS} downloads; {label} was discarded and is not served"
        )

    def download(self, objects: list[RemoteObject], root: Path, progress: Progress) -> None:
        """Fetch the objects' bytes with parallel transfers (large objects in slices)."""
        tasks = []
        for obj in objects:
            target = root / obj.path
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as file:
                file.truncate(obj.expected.size)  # slices write into place
            for start in range(0, obj.expected.size, self.slice_bytes):
                end = min(start + self.slice_bytes, obj.expected.size) - 1
                tasks.append((obj, target, start, end))
        if not tasks:
            return
        with ThreadPoolExecutor(self._workers(len(tasks)), thread_name_prefix="gcs") as pool:
            futures = [pool.submit(self._download_range, *task, progress) for task in tasks]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in done if f.exception() is not None), None)
            if failed is not None:
                for future in futures:
                    future.cancel()
                raise failed.exception()  # type: ignore[misc]

    def _download_range(
        self, obj: RemoteObject, target: Path, start: int, end: int, progress: Progress
    ) -> None:
        """Bytes ``start..end`` of an object into place; retries resume after the bytes written."""
        blob = self.client.bucket(self.bucket).blob(obj.name, generation=obj.generation)
        where = f"gs://{self.bucket}/{obj.name}"
        backoff = Backoff(self.retry_timeout_s)
        written = 0
        while True:
            with target.open("r+b") as file:
                file.seek(start + written)
                writer = _CountingWriter(file, progress)
                try:
                    blob.download_to_file(
                        writer,
                        client=self.client,
                        start=start + written,
                        end=end,
                        raw_download=True,  # the stored bytes, exactly what the checksums cover
                        checksum=None,  # verified on disk afterwards, for slices too
                        retry=None,  # our loop retries, resuming from the bytes written
                        timeout=REQUEST_TIMEOUT,
                    )
                    return
                except Exception as exc:
                    error = exc
                written += writer.count
            if writer.count:
                backoff.progressed()
            if not is_transient(error):
                raise ModelLoadError(f"downloading {where} failed: {describe(error)}") from None
            delay = backoff.next_delay()
            if delay is None:
                raise ModelLoadError(
                    f"downloading {where} failed: {describe(error)}"
                    f" (gave up after {backoff.failures} tries in a row)"
                ) from None
            logger.warning("%s: %s; retrying in %.1fs", where, describe(error), delay)
            time.sleep(delay)

    def _workers(self, tasks: int) -> int:
        return max(1, min(self.workers, tasks))


class _CountingWriter:
    """A write-only file wrapper that counts bytes and feeds the progress line."""

    def __init__(self, file: BinaryIO, progress: Progress) -> None:
        self._file = file
        self._progress = progress
        self.count = 0

    def write(self, data: bytes) -> int:
        written = self._file.write(data)
        self.count += len(data)
        self._progress.add(len(data))
        return written


def widen_connection_pool(client: Any, workers: int) -> None:
    """Let every transfer thread keep its own connection (requests pools 10 by default)."""
    import requests.adapters

    size = workers + 2  # the transfers, plus listing and credential refreshes
    adapter = requests.adapters.HTTPAdapter(pool_connections=size, pool_maxsize=size)
    for scheme in ("http://", "https://"):
        client._http.mount(scheme, adapter)
