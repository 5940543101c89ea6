"""The status page's recent-traffic window (``serve_app/recent.py``), on a fake clock."""

from __future__ import annotations

import pytest

from serve_app import metrics
from serve_app.recent import TRAFFIC, RecentTraffic


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_counts_requests_server_and_client_errors_per_model() -> None:
    clock = Clock()
    traffic = RecentTraffic(window_s=60, clock=clock)
    for status in (200, 200, 200, 400, 404, 503, 504):
        traffic.record("digits", status, 0.010)
    traffic.record("minilm", 200, 0.020)
    digits = traffic.snapshot("digits")
    assert (digits["requests"], digits["errors"], digits["client_errors"]) == (7, 2, 2)
    assert traffic.snapshot("minilm")["requests"] == 1
    assert traffic.snapshot("unknown") == {
        "requests": 0,
        "rps": 0.0,
        "errors": 0,
        "client_errors": 0,
        "p50_ms": None,
    }
    assert traffic.models() == ["digits", "minilm"]


def test_requests_without_a_model_are_not_counted() -> None:
    traffic = RecentTraffic(clock=Clock())
    traffic.record("-", 401, 0.001)
    assert traffic.models() == []


def test_median_latency_is_within_the_bin_width() -> None:
    clock = Clock()
    traffic = RecentTraffic(clock=clock)
    # 101 latencies from 1 ms to 101 ms: the median is 51 ms.
    for ms in range(1, 102):
        traffic.record("m", 200, ms / 1000)
    assert traffic.snapshot("m")["p50_ms"] == pytest.approx(51, rel=0.026)
    # Sub-microsecond and zero latencies land in the first bin, not an error.
    traffic.record("fast", 200, 0.0)
    assert traffic.snapshot("fast")["p50_ms"] < 0.011


def test_the_window_rolls_and_old_seconds_drop_out() -> None:
    clock = Clock(1000.0)
    traffic = RecentTraffic(window_s=60, clock=clock)
    for second in range(10):  # 10 requests a second for 10 seconds
        clock.now = 1000.0 + second
        for _ in range(10):
            traffic.record("m", 200, 0.005)
    assert traffic.snapshot("m")["requests"] == 100
    # Younger than the window: rate over the time since the first request.
    assert traffic.snapshot("m")["rps"] == pytest.approx(100 / 9, abs=0.001)
    clock.now = 1065.0  # seconds 1000..1005 are out of the last 60
    assert traffic.snapshot("m")["requests"] == 40
    assert traffic.snapshot("m")["rps"] == pytest.approx(40 / 60, abs=0.001)
    # A slot is reused for its second one window later, starting from zero.
    traffic.record("m", 500, 0.005)
    assert traffic.snapshot("m")["requests"] == 41 and traffic.snapshot("m")["errors"] == 1
    clock.now = 2000.0
    assert traffic.snapshot("m")["requests"] == 0
    assert traffic.models() == []


def test_idle_time_since_the_last_request() -> None:
    clock = Clock(1000.2)
    traffic = RecentTraffic(clock=clock)
    assert traffic.idle_s("m") is None
    traffic.record("m", 200, 0.005)
    assert traffic.idle_s("m") == 0.0
    clock.now = 1012.5
    assert 11 <= traffic.idle_s("m") <= 12.5


def test_names_are_bounded_and_idle_ones_make_room() -> None:
    clock = Clock(1000.0)
    traffic = RecentTraffic(window_s=60, max_models=3, clock=clock)
    for name in ("a", "b", "c", "d"):
        traffic.record(name, 404, 0.001)
    assert traffic.models() == ["a", "b", "c"]  # full: 'd' is not tracked
    clock.now = 1030.0
    traffic.record("a", 200, 0.001)
    clock.now = 1061.0  # b and c idle for a whole window, a is not
    traffic.record("e", 200, 0.001)
    traffic.record("f", 200, 0.001)
    assert traffic.models() == ["a", "e", "f"]


def test_a_pool_window_combines_its_models() -> None:
    clock = Clock()
    traffic = RecentTraffic(clock=clock)
    traffic.record("p1", 200, 0.010)
    traffic.record("p2", 503, 0.030)
    traffic.record("p2", 200, 0.020)
    combined = traffic.combined(["p1", "p2", "never"])
    assert (combined["requests"], combined["errors"]) == (3, 1)
    assert combined["p50_ms"] == pytest.approx(20, rel=0.026)


def test_every_request_metrics_records_lands_in_the_window() -> None:
    # metrics.record_request is where every call (serve_app/call.py) counts, REST or gRPC.
    metrics.record_request("hooked-model", 503, 0.020)
    metrics.record_request("hooked-model", 200, 0.010)
    seen = TRAFFIC.snapshot("hooked-model")
    assert (seen["requests"], seen["errors"]) == (2, 1)
