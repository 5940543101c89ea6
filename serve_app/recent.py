"""Recent traffic per model, as this ingress replica saw it: the status page's numbers.

A rolling window of the last ``WINDOW_S`` seconds in per-second slots. Each slot counts a
model's requests, its server errors (5xx: failures, overload, deadlines), its client errors
(4xx) and their latencies in a histogram of log-spaced bins 5 % wide, so the p50 comes out
within 2.5 % without keeping or sorting samples. ``record`` runs once per request on the event
loop (``metrics.record_request``, for HTTP and gRPC alike): O(1), no lock, no sorting; the
sums are made when the page asks. Memory is bounded: at most ``MAX_MODELS`` names (a
request may name any model, known or not), and names idle for a whole window make room.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

WINDOW_S = 60
MAX_MODELS = 4096
_BIN_BASE_MS = 0.01  # the first bin holds everything up to 0.0105 ms
_BIN_RATIO = 1.05
_LOG_RATIO = math.log(_BIN_RATIO)
NO_MODEL = "-"  # a request that never named a model (health probes, 401s, the page itself)


class _Slot:
    """One second of one model's traffic."""

    __slots__ = ("client_errors", "latency", "requests", "second", "server_errors")

    def __init__(self, second: int) -> None:
        self.second = second
        self.requests = 0
        self.server_errors = 0
        self.client_errors = 0
        self.latency: dict[int, int] = {}  # bin -> requests


class _Series:
    """One model's ring of per-second slots."""

    __slots__ = ("first_seen", "last_second", "slots")

    def __init__(self, window_s: int, now: float) -> None:
        self.slots: list[_Slot | None] = [None] * window_s
        self.first_seen = now
        self.last_second = int(now)


class RecentTraffic:
    """Requests, errors and latencies per model over the last ``window_s`` seconds."""

    def __init__(
        self,
        window_s: int = WINDOW_S,
        max_models: int = MAX_MODELS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self.max_models = max_models
        self._clock = clock
        self._series: dict[str, _Series] = {}
        self._pruned_at = -1

    def record(self, model: str, status: int, seconds: float) -> None:
        """Count one answered request of ``model`` (status code, seconds it took)."""
        if model == NO_MODEL:
            return
        now = self._clock()
        second = int(now)
        series = self._series.get(model)
        if series is None:
            series = self._add(model, now)
            if series is None:  # full of names active in this window: not tracked
                return
        index = second % self.window_s
        slot = series.slots[index]
        if slot is None or slot.second != second:
            slot = series.slots[index] = _Slot(second)
        series.last_second = second
        slot.requests += 1
        if status >= 500:
            slot.server_errors += 1
        elif status >= 400:
            slot.client_errors += 1
        ms = seconds * 1000.0
        bin_ = int(math.log(ms / _BIN_BASE_MS) / _LOG_RATIO) if ms > _BIN_BASE_MS else 0
        slot.latency[bin_] = slot.latency.get(bin_, 0) + 1

    def _add(self, model: str, now: float) -> _Series | None:
        if len(self._series) >= self.max_models:
            self._prune(int(now))
            if len(self._series) >= self.max_models:
                return None
        series = self._series[model] = _Series(self.window_s, now)
        return series

    def _prune(self, second: int) -> None:
        """Drop the names idle for a whole window (at most once a second: O(names))."""
        if second == self._pruned_at:
            return
        self._pruned_at = second
        idle = [m for m, s in self._series.items() if s.last_second <= second - self.window_s]
        for model in idle:
            del self._series[model]

    def idle_s(self, model: str) -> float | None:
        """At least how many seconds ago ``model``'s last request was (None: none in
        memory); 0 within a second of it."""
        series = self._series.get(model)
        return None if series is None else max(0.0, self._clock() - series.last_second - 1)

    def models(self) -> list[str]:
        """The names with a request in the window."""
        cutoff = int(self._clock()) - self.window_s
        return sorted(m for m, s in self._series.items() if s.last_second > cutoff)

    def snapshot(self, model: str) -> dict[str, Any]:
        """``model``'s window: requests, requests per second, server errors (5xx), client
        errors (4xx) and the median latency in ms (None without requests)."""
        return self.combined([model])

    def combined(self, models: list[str]) -> dict[str, Any]:
        """The window of several models together (a pool's)."""
        now = self._clock()
        cutoff = int(now) - self.window_s
        requests = server_errors = client_errors = 0
        latency: dict[int, int] = {}
        first_seen = now
        for model in models:
            series = self._series.get(model)
            if series is None:
                continue
            first_seen = min(first_seen, series.first_seen)
            for slot in series.slots:
                if slot is None or slot.second <= cutoff:
                    continue
                requests += slot.requests
                server_errors += slot.server_errors
                client_errors += slot.client_errors
                for bin_, count in slot.latency.items():
                    latency[bin_] = latency.get(bin_, 0) + count
        # Requests per second over the window, or over the time since the first request
        # when that is shorter (a fresh replica), never over less than a second.
        span = min(float(self.window_s), max(1.0, now - first_seen))
        return {
            "requests": requests,
            "rps": round(requests / span, 3),
            "errors": server_errors,
            "client_errors": client_errors,
            "p50_ms": _median_ms(latency, requests),
        }


def _median_ms(latency: dict[int, int], total: int) -> float | None:
    """The median of a latency histogram: the middle of the bin that holds it."""
    if total == 0:
        return None
    rank = (total + 1) // 2
    seen = 0
    for bin_ in sorted(latency):
        seen += latency[bin_]
        if seen >= rank:
            return round(_BIN_BASE_MS * _BIN_RATIO ** (bin_ + 0.5), 3)
    return None  # unreachable: the bins add up to total


# This ingress replica's window (each replica counts the requests it answered).
TRAFFIC = RecentTraffic()
