"""Cross-process file locks (``flock``) that the kernel releases when their process dies.

Replicas on one machine are separate processes, and any of them can be killed at any
moment. ``flock`` locks belong to an open file and vanish with it, so a crashed replica
never leaves a stale lock behind, and no lock file ever needs to be deleted (deleting one
would race with a process that has just opened it).
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger("ray.serve")


class FileLock:
    """One ``flock`` on ``path``: shared (many holders) or exclusive (one holder)."""

    def __init__(self, path: Path, shared: bool = False) -> None:
        self.path = path
        self.shared = shared
        self._fd: int | None = None

    def acquire(self, blocking: bool = True, waiting_message: str = "") -> bool:
        """Take the lock; with ``blocking=False`` return False at once if someone holds it.

        ``waiting_message`` is logged once if the lock is busy and we wait for it, so a
        replica that waits on another's download says so in its log.
        """
        if self._fd is not None:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        try:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                if not blocking:
                    os.close(fd)
                    return False
                if waiting_message:
                    logger.info(waiting_message)
                fcntl.flock(fd, mode)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        """Drop the lock (closing the file releases it)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __del__(self) -> None:
        self.release()


@contextmanager
def locked(path: Path, shared: bool = False, waiting_message: str = "") -> Iterator[FileLock]:
    """Hold a blocking lock on ``path`` for the duration of the block."""
    lock = FileLock(path, shared)
    lock.acquire(waiting_message=waiting_message)
    try:
        yield lock
    finally:
        lock.release()


@contextmanager
def try_locked(path: Path) -> Iterator[bool]:
    """Try an exclusive lock without waiting; yields whether it was taken (held in the block)."""
    lock = FileLock(path)
    taken = lock.acquire(blocking=False)
    try:
        yield taken
    finally:
        lock.release()
