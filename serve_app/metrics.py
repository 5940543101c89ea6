"""Prometheus metrics of the service, exported through Ray's metrics agent (``ray_`` prefix).

Created lazily (a replica creates only the ones it records) and never allowed to fail a
request: outside a Ray worker, or if the metrics agent is unavailable, recording is a no-op.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

from serve_app import recent

logger = logging.getLogger("ray.serve")

LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000]
ROW_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
LOAD_BOUNDARIES_S = [0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300]

# name -> (kind, description, tag keys, histogram boundaries)
DEFINITIONS: dict[str, tuple[str, str, tuple[str, ...], list[float] | None]] = {
    "serve_app_requests": (
        "counter",
        "HTTP requests answered by the ingress, by model and status code",
        ("model", "code"),
        None,
    ),
    "serve_app_request_latency_ms": (
        "histogram",
        "Ingress latency of HTTP requests, by model",
        ("model",),
        LATENCY_BOUNDARIES_MS,
    ),
    "serve_app_version_requests": (
        "counter",
        "Requests each model version answered in its replicas (canary splits), by outcome",
        ("model", "version", "outcome"),
        None,
    ),
    "serve_app_version_latency_ms": (
        "histogram",
        "Time a model version's replica took to answer a request, by model and version",
        ("model", "version"),
        LATENCY_BOUNDARIES_MS,
    ),
    "serve_app_batch_rows": (
        "histogram",
        "Rows (instances) per model call after dynamic batching",
        ("model",),
        ROW_BOUNDARIES,
    ),
    "serve_app_batch_requests": (
        "histogram",
        "Requests (chunks) per model call after dynamic batching",
        ("model",),
        ROW_BOUNDARIES,
    ),
    "serve_app_load_seconds": (
        "histogram",
        "Time to fetch, load and warm up one model version",
        ("model", "outcome"),
        LOAD_BOUNDARIES_S,
    ),
    "serve_app_cache_fetches": (
        "counter",
        "Versions of gs:// models fetched, from the local cache (hit) or GCS (miss)",
        ("model", "result"),
        None,
    ),
    "serve_app_versions_loaded": (
        "gauge",
        "Model versions loaded and serving in a replica",
        ("model",),
        None,
    ),
    "serve_app_pool_models": (
        "gauge",
        "Models a pool replica holds (loaded or loading)",
        ("pool",),
        None,
    ),
    "serve_app_pool_load_seconds": (
        "histogram",
        "Time to load one model of a pool on demand (fetch, load, warm up)",
        ("pool",),
        LOAD_BOUNDARIES_S,
    ),
    "serve_app_pool_evictions": (
        "counter",
        "Models a pool replica evicted (least recently used) to make room",
        ("pool",),
        None,
    ),
    "serve_app_pool_requests": (
        "counter",
        "Pool requests that found their model loaded (hit) or waited for a load (miss)",
        ("pool", "result"),
        None,
    ),
}

_created: dict[str, Any] = {}


def _metric(name: str) -> Any:
    metric = _created.get(name)
    if metric is None:
        from ray.serve import metrics as serve_metrics

        kind, description, tags, boundaries = DEFINITIONS[name]
        if kind == "counter":
            metric = serve_metrics.Counter(name, description=description, tag_keys=tags)
        elif kind == "gauge":
            metric = serve_metrics.Gauge(name, description=description, tag_keys=tags)
        else:
            metric = serve_metrics.Histogram(
                name, description=description, boundaries=boundaries, tag_keys=tags
            )
        _created[name] = metric
    return metric


def _record(name: str, value: float, tags: dict[str, str]) -> None:
    try:
        metric = _metric(name)
        kind = DEFINITIONS[name][0]
        if kind == "counter":
            metric.inc(value, tags=tags)
        elif kind == "gauge":
            metric.set(value, tags=tags)
        else:
            metric.observe(value, tags=tags)
    except Exception as exc:  # metrics must never fail a request
        logger.debug("metric %s not recorded: %s", name, exc)


# Per-request counts are added up here and exported every FLUSH_S: one counter update per
# tag set per period instead of one per request, on the busiest paths.
FLUSH_S = 2.0
_pending_counts: collections.Counter[tuple[str, tuple[tuple[str, str], ...]]] = (
    collections.Counter()
)
_flush_timer: asyncio.TimerHandle | None = None


def count(name: str, tags: dict[str, str]) -> None:
    """Add one to a counter; exported within FLUSH_S."""
    global _flush_timer
    _pending_counts[(name, tuple(tags.items()))] += 1
    if _flush_timer is None:
        try:
            _flush_timer = asyncio.get_running_loop().call_later(FLUSH_S, flush_counts)
        except RuntimeError:  # no event loop (a unit test): export at once
            flush_counts()


def flush_counts() -> None:
    """Export the counts added up since the last flush."""
    global _flush_timer
    _flush_timer = None
    pending = dict(_pending_counts)
    _pending_counts.clear()
    for (name, tags), value in pending.items():
        _record(name, value, dict(tags))


def record_request(model: str, code: int, seconds: float) -> None:
    """Count one answered request and observe its latency (ingress), and add it to the
    status page's recent window (``serve_app/recent.py``): HTTP and gRPC both come here."""
    recent.TRAFFIC.record(model, code, seconds)
    count("serve_app_requests", {"model": model, "code": str(code)})
    _record("serve_app_request_latency_ms", seconds * 1000, {"model": model})


def record_version_request(model: str, version: int, seconds: float, ok: bool) -> None:
    """Count one request a model version answered and observe its latency (replica): what
    a canary split is judged by."""
    tags = {"model": model, "version": str(version)}
    count("serve_app_version_requests", {**tags, "outcome": "ok" if ok else "error"})
    _record("serve_app_version_latency_ms", seconds * 1000, tags)


def record_batch(model: str, rows: int, requests: int) -> None:
    _record("serve_app_batch_rows", rows, {"model": model})
    _record("serve_app_batch_requests", requests, {"model": model})


def record_load(model: str, seconds: float, ok: bool) -> None:
    _record("serve_app_load_seconds", seconds, {"model": model, "outcome": "ok" if ok else "error"})


def record_cache_fetch(model: str, hit: bool) -> None:
    _record("serve_app_cache_fetches", 1, {"model": model, "result": "hit" if hit else "miss"})


def record_versions(model: str, count: int) -> None:
    _record("serve_app_versions_loaded", count, {"model": model})


def record_pool_models(pool: str, count: int) -> None:
    _record("serve_app_pool_models", count, {"pool": pool})


def record_pool_load(pool: str, seconds: float) -> None:
    _record("serve_app_pool_load_seconds", seconds, {"pool": pool})


def record_pool_eviction(pool: str) -> None:
    _record("serve_app_pool_evictions", 1, {"pool": pool})


def record_pool_request(pool: str, hit: bool) -> None:
    _record("serve_app_pool_requests", 1, {"pool": pool, "result": "hit" if hit else "miss"})
