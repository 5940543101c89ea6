"""Download progress a person can follow in a replica's log: bytes, rate and time left."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("ray.serve")

LOG_EVERY_S = 5.0
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(count: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    value = float(count)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_seconds(seconds: float) -> str:
    """``75`` -> ``1m15s``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """Thread-safe byte counter for one download that logs a line every ``every_s`` seconds.

    Many transfer threads call ``add``; whichever crosses the interval writes the line, so
    no extra thread is needed and a fast download logs only its start and end.
    """

    def __init__(
        self,
        label: str,
        total_bytes: int,
        every_s: float = LOG_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.label = label
        self.total = total_bytes
        self.done = 0
        self._every = every_s
        self._clock = clock
        self._log = log or logger.info
        self._lock = threading.Lock()
        self._started = clock()
        self._last_log = self._started

    def add(self, count: int) -> None:
        """Count ``count`` more bytes written; log a progress line if one is due."""
        with self._lock:
            self.done += count
            now = self._clock()
            if now - self._last_log < self._every:
                return
            self._last_log = now
            line = self.line(now)
        self._log(line)

    def line(self, now: float | None = None) -> str:
        """``gs://b/m version 2: 1.2 GiB of 4.0 GiB (30%) at 85.3 MiB/s, ETA 34s``."""
        now = self._clock() if now is None else now
        elapsed = max(now - self._started, 1e-9)
        rate = self.done / elapsed
        percent = 100 * self.done / self.total if self.total else 100
        eta = f", ETA {human_seconds((self.total - self.done) / rate)}" if rate > 0 else ""
        return (
            f"{self.label}: {human_bytes(self.done)} of {human_bytes(self.total)}"
            f" ({percent:.0f}%) at {human_bytes(rate)}/s{eta}"
        )

    def summary(self) -> str:
        """The closing line: what was downloaded, how long it took, the mean rate."""
        elapsed = max(self._clock() - self._started, 1e-9)
        return (
            f"{self.label}: downloaded {human_bytes(self.done)} in {elapsed:.1f}s"
            f" ({human_bytes(self.done / elapsed)}/s)"
        )
