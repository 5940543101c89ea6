"""Pure parts of the GCS backend: error classification, backoff bounds, progress lines."""

from __future__ import annotations

import http.client

import pytest
import requests
import urllib3
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions

from serve_app.store.progress import Progress, human_bytes, human_seconds
from serve_app.store.retries import Backoff, describe, is_transient


@pytest.mark.parametrize(
    "exc",
    [
        api_exceptions.ServiceUnavailable("down"),
        api_exceptions.InternalServerError("oops"),
        api_exceptions.BadGateway("bad"),
        api_exceptions.GatewayTimeout("slow"),
        api_exceptions.TooManyRequests("slow down"),
        requests.ConnectionError("refused"),
        requests.exceptions.ReadTimeout("read timed out"),
        requests.exceptions.ChunkedEncodingError("reset"),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError("timed out"),
        http.client.IncompleteRead(b"partial"),
        urllib3.exceptions.ProtocolError("Connection broken"),
        auth_exceptions.TransportError("metadata server down"),
        api_exceptions.RetryError("gave up", api_exceptions.ServiceUnavailable("down")),
    ],
    ids=lambda e: type(e).__name__,
)
def test_outages_are_transient(exc: Exception) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        api_exceptions.NotFound("no bucket"),
        api_exceptions.Forbidden("denied"),
        api_exceptions.Unauthorized("who are you"),
        api_exceptions.BadRequest("bad"),
        auth_exceptions.DefaultCredentialsError("no credentials"),
        ValueError("a bug"),
        api_exceptions.RetryError("gave up", api_exceptions.Forbidden("denied")),
    ],
    ids=lambda e: type(e).__name__,
)
def test_answers_are_not_transient(exc: Exception) -> None:
    assert not is_transient(exc)


def test_describe_is_short_and_readable() -> None:
    assert describe(api_exceptions.ServiceUnavailable("GET http://x/y: long body")) == (
        "HTTP 503 Service Unavailable"
    )
    wrapped = api_exceptions.RetryError("Timeout of 5.0s exceeded", TimeoutError("timed out"))
    assert describe(wrapped) == "TimeoutError: timed out"
    long = describe(ValueError("x" * 1000))
    assert len(long) < 320 and long.endswith("...")
    assert "\n" not in describe(ValueError("two\nlines"))


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_backoff_grows_to_its_cap_and_gives_up_after_the_streak_timeout() -> None:
    clock = FakeClock()
    backoff = Backoff(timeout_s=20, initial_s=0.5, maximum_s=4, clock=clock, jitter=lambda: 1.0)
    delays = []
    while (delay := backoff.next_delay()) is not None:
        delays.append(delay)
        clock.now += delay
    assert delays[:5] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert sum(delays) <= 20
    assert backoff.failures == len(delays) + 1


def test_backoff_progress_starts_a_new_streak() -> None:
    clock = FakeClock()
    backoff = Backoff(timeout_s=5, initial_s=1, maximum_s=8, clock=clock, jitter=lambda: 1.0)
    assert backoff.next_delay() == 1
    clock.now += 4.5
    backoff.progressed()  # bytes arrived: a late hiccup in a long download is retried
    clock.now += 100
    assert backoff.next_delay() == 1


def test_backoff_jitter_stays_within_half_to_full_delay() -> None:
    low = Backoff(timeout_s=60, initial_s=2, clock=FakeClock(), jitter=lambda: 0.0)
    high = Backoff(timeout_s=60, initial_s=2, clock=FakeClock(), jitter=lambda: 0.999)
    assert low.next_delay() == 1.0
    assert 1.99 < (high.next_delay() or 0) <= 2.0


def test_human_units() -> None:
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * 1024**3) == "3.0 GiB"
    assert human_seconds(5) == "5s"
    assert human_seconds(75) == "1m15s"
    assert human_seconds(7260) == "2h01m"


def test_progress_logs_bytes_rate_and_eta_at_intervals() -> None:
    clock = FakeClock()
    lines: list[str] = []
    total = 100 * 1024 * 1024
    progress = Progress("gs://b/m version 2", total, every_s=5, clock=clock, log=lines.append)
    clock.now += 1
    progress.add(10 * 1024 * 1024)
    assert lines == []  # not yet due
    clock.now += 4
    progress.add(10 * 1024 * 1024)  # 20 MiB in 5 s: 4 MiB/s, 80 MiB left: 20 s
    assert lines == ["gs://b/m version 2: 20.0 MiB of 100.0 MiB (20%) at 4.0 MiB/s, ETA 20s"]
    clock.now += 1
    progress.add(1)
    assert len(lines) == 1
    clock.now += 15
    progress.add(80 * 1024 * 1024 - 1)
    assert lines[-1].startswith("gs://b/m version 2: 100.0 MiB of 100.0 MiB (100%)")
    assert progress.summary() == "gs://b/m version 2: downloaded 100.0 MiB in 21.0s (4.8 MiB/s)"
