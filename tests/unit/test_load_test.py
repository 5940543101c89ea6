"""The load test's pure parts: percentiles, backpressure detection, the loopback guard."""

from __future__ import annotations

import pytest

from bench.load_test import is_backpressure, percentile
from bench.loadgen import check_loopback


def test_percentile_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_only_explicit_overload_answers_count_as_backpressure():
    assert is_backpressure(503, '{"error": "model \'digits\' is overloaded: ..."}')
    assert is_backpressure(429, '{"error": {"message": "model is overloaded"}}')
    assert not is_backpressure(503, '{"error": "model \'x\' is not available"}')
    assert not is_backpressure(500, "overloaded")


def test_loopback_only():
    check_loopback("http://127.0.0.1:8000")
    check_loopback("http://localhost:8000")
    check_loopback("http://[::1]:8000")
    for url in ("http://10.0.0.1:8000", "http://example.com", "http://0.0.0.0:8000"):
        with pytest.raises(ValueError, match="non-loopback"):
            check_loopback(url)
