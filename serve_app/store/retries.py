"""Which GCS errors are worth retrying, and how long to keep trying.

Transient: 408, 429 and 5xx answers, timeouts, refused or reset connections, truncated
bodies. Anything else (404, 403, bad credentials) is an answer, not an outage: retrying it
only delays a clear error. ``retry_timeout_s`` bounds how long GCS may keep failing in a
row before we give up, for listings and downloads alike.
"""

from __future__ import annotations

import http
import http.client
import random
import time
from collections.abc import Callable

import requests
import urllib3
from google.api_core import exceptions as api_exceptions
from google.api_core import retry as api_retry
from google.auth import exceptions as auth_exceptions

INITIAL_DELAY_S = 0.5
MAX_DELAY_S = 8.0
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
_TRANSIENT_TYPES = (
    ConnectionError,
    TimeoutError,
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    http.client.HTTPException,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.TimeoutError,
    urllib3.exceptions.PoolError,
)
_MAX_MESSAGE = 300


def is_transient(exc: BaseException) -> bool:
    """True for errors that a later attempt may not meet (outages, not answers)."""
    if isinstance(exc, api_exceptions.RetryError):
        return exc.cause is not None and is_transient(exc.cause)
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return exc.code in _TRANSIENT_STATUS
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status is not None:  # the media layer's InvalidResponse carries the raw response
        return status in _TRANSIENT_STATUS
    # e.g. the metadata server (credentials on GKE) is down
    return isinstance(exc, auth_exceptions.TransportError)


def describe(exc: BaseException) -> str:
    """A short, single-line account of an error, for statuses and logs."""
    if isinstance(exc, api_exceptions.RetryError) and exc.cause is not None:
        return describe(exc.cause)
    if isinstance(exc, api_exceptions.GoogleAPICallError) and exc.code is not None:
        text = f"HTTP {int(exc.code)} {_phrase(int(exc.code))}"
    elif isinstance(exc, requests.ConnectionError):
        text = f"{type(exc).__name__}: {_connection_reason(exc)}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + "..."


def _phrase(code: int) -> str:
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return ""


def _connection_reason(exc: requests.ConnectionError) -> str:
    """The root cause of a refused/reset connection, without urllib3's pool and URL preamble."""
    reason: object = exc.args[0] if exc.args else exc
    reason = getattr(reason, "reason", reason)  # urllib3's MaxRetryError wraps the cause
    text = str(reason)
    for marker in ("Failed to establish a new connection: ", "Connection aborted.', "):
        if marker in text:
            text = text.split(marker, 1)[1]
    return text.strip(" ()'\"")


def listing_retry(timeout_s: float, on_error: Callable[[Exception], None] | None = None):
    """The client library's retry for metadata calls: transient errors, bounded backoff."""
    return api_retry.Retry(
        predicate=is_transient,
        initial=INITIAL_DELAY_S,
        maximum=MAX_DELAY_S,
        multiplier=2.0,
        timeout=timeout_s,
        on_error=on_error,
    )


class Backoff:
    """Delays between attempts of a download while it keeps failing.

    A streak of failures may last at most ``timeout_s``; any progress (bytes received)
    starts a new streak, so a long download that hits one hiccup late is still retried.
    """

    def __init__(
        self,
        timeout_s: float,
        initial_s: float = INITIAL_DELAY_S,
        maximum_s: float = MAX_DELAY_S,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.timeout_s = timeout_s
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self._clock = clock
        self._jitter = jitter
        self._streak_start: float | None = None
        self._next = initial_s
        self.failures = 0

    def progressed(self) -> None:
        """Bytes arrived since the last failure: the next failure starts a new streak."""
        self._streak_start = None
        self._next = self.initial_s

    def next_delay(self) -> float | None:
        """Seconds to wait before the next attempt, or None to give up."""
        now = self._clock()
        if self._streak_start is None:
            self._streak_start = now
        self.failures += 1
        # Jitter spreads replicas that failed together so they do not retry in lockstep.
        delay = self._next * (0.5 + 0.5 * self._jitter())
        self._next = min(self._next * 2, self.maximum_s)
        if now + delay - self._streak_start > self.timeout_s:
            return None
        return delay
