"""Model pool benchmark: what a cold model costs, and a pool under random traffic.

    python -m bench.pool_bench --out bench/results/pool_cold_start.json

Builds 50 tiny Keras models (``serve_app.pool_examples``) into a temporary pool, starts Ray
Serve in this process (with the fast request path, as ``make run``) with one pool
(2 replicas, ``max_models_per_replica: 8``) and measures over loopback, through TF Serving
REST predict:

1. cold vs warm: for ``--cold`` models never requested before, one request (the model must
   be loaded: a miss) and then a second one (a hit), one at a time. The extra latency of a
   cold request is ``cold - warm``; the pool's own load time per model is reported too.
2. random traffic: ``--concurrency`` clients over all 50 models for ``--duration`` seconds,
   with throughput, p50/p99, the hit ratio and the evictions it caused.

Every answer is checked against the model that should have given it.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from bench.load_test import machine, percentile
from serve_app.pool_examples import build_pool, expected_output, model_name

MODELS = 50
MAX_PER_REPLICA = 8
REPLICAS = 2
WARM_UP_MODELS = 4  # requested before measuring, so both replicas have imported TensorFlow


def pool_args(root: Path) -> dict[str, Any]:
    return {
        "pools": [
            {
                "name": "tenants",
                "framework": "tensorflow",
                "uri": str(root),
                "max_models_per_replica": MAX_PER_REPLICA,
                "num_replicas": REPLICAS,
                "resources": {"num_cpus": 0.25},
                "batching": {"max_batch_size": 16, "batch_wait_timeout_s": 0.002},
            }
        ]
    }


def timed_predict(session: requests.Session, base: str, index: int) -> float:
    """One request to model ``index``; its latency in ms (the answer is checked)."""
    row = [random.uniform(-1, 1) for _ in range(4)]
    started = time.perf_counter()
    response = session.post(
        f"{base}/v1/models/{model_name(index)}:predict", json={"instances": [row]}, timeout=120
    )
    elapsed = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    answer = response.json()["predictions"][0][0]
    if abs(answer - expected_output(index, row)) > 1e-3:
        raise AssertionError(f"{model_name(index)} answered {answer} for {row}")
    return elapsed


def cold_vs_warm(base: str, count: int) -> dict[str, Any]:
    cold, warm = [], []
    with requests.Session() as session:
        # The first load on a fresh replica also imports TensorFlow; measured on its own.
        first = [timed_predict(session, base, MODELS - 1 - i) for i in range(WARM_UP_MODELS)]
        for index in range(count):
            cold.append(timed_predict(session, base, index))
            warm.append(timed_predict(session, base, index))
    extra = [c - w for c, w in zip(cold, warm)]
    return {
        "models": count,
        "first_request_on_fresh_replicas_ms": [round(ms, 1) for ms in first],
        "cold_p50_ms": round(statistics.median(cold), 1),
        "cold_max_ms": round(max(cold), 1),
        "warm_p50_ms": round(statistics.median(warm), 1),
        "extra_latency_p50_ms": round(statistics.median(extra), 1),
        "extra_latency_max_ms": round(max(extra), 1),
    }


def random_traffic(base: str, concurrency: int, duration: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    used: list[int] = []
    lock = threading.Lock()
    deadline = time.monotonic() + duration

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with requests.Session() as session:
            while time.monotonic() < deadline:
                index = rng.randrange(MODELS)
                try:
                    elapsed = timed_predict(session, base, index)
                except Exception as exc:  # counted and reported, never hidden
                    with lock:
                        errors.append(repr(exc)[:200])
                    continue
                with lock:
                    latencies.append(elapsed)
                    used.append(index)

    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as workers:
        list(workers.map(client, range(concurrency)))
    seconds = time.monotonic() - started
    return {
        "concurrency": concurrency,
        "duration_s": round(seconds, 1),
        "requests": len(latencies),
        "throughput_rps": round(len(latencies) / seconds, 1),
        "p50_ms": round(percentile(latencies, 50) or 0, 1),
        "p99_ms": round(percentile(latencies, 99) or 0, 1),
        "errors": len(errors),
        "first_errors": errors[:5],
        "recent_models": list(dict.fromkeys(reversed(used)))[:16],
    }


def pool_reports(base: str, recent: list[int]) -> dict[str, dict[str, Any]]:
    """Each replica's pool report, read through the stats of recently used models (which are
    most likely still loaded, so reading disturbs the counters as little as possible)."""
    reports: dict[str, dict[str, Any]] = {}
    with requests.Session() as session:
        for index in recent:
            body = session.get(f"{base}/v2/models/{model_name(index)}/stats", timeout=120).json()
            reports.setdefault(body["replica"]["id"], body["pool"])
            if len(reports) == REPLICAS:
                break
    return reports


COUNTERS = ("hits", "misses", "loads", "evictions")


def counter_deltas(
    before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]
) -> dict[str, int]:
    """What the traffic phase added to the replicas' counters."""
    return {
        key: sum(r[key] - before.get(replica, {}).get(key, 0) for replica, r in after.items())
        for key in COUNTERS
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pool_bench")
    parser.add_argument("--cold", type=int, default=16, help="models measured cold then warm")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/pool_cold_start.json"))
    args = parser.parse_args(argv)

    import os

    from serve_app.fast_path import FAST_PATH_ENV

    os.environ.update(FAST_PATH_ENV)  # as `make run`: Ray reads it when it starts
    import ray
    from ray import serve

    from serve_app.app import build_app
    from tests.helpers import free_port

    with tempfile.TemporaryDirectory(prefix="pool-bench-") as tmp:
        root = Path(tmp) / "pool"
        build_pool(root, MODELS)
        port = free_port()
        ray.init(num_cpus=6, include_dashboard=False, log_to_driver=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(build_app(pool_args(root)), name="pool-bench", route_prefix="/")
            base = f"http://127.0.0.1:{port}"
            cold = cold_vs_warm(base, args.cold)
            before = pool_reports(base, list(reversed(range(args.cold))))
            traffic = random_traffic(base, args.concurrency, args.duration)
            after = pool_reports(base, traffic.pop("recent_models"))
        finally:
            serve.shutdown()
            ray.shutdown()
    loads = [r["load_seconds_p50"] for r in after.values() if r["load_seconds_p50"] is not None]
    result = {
        "benchmark": "pool_bench",
        "command": "python -m bench.pool_bench " + " ".join(argv or []),
        "pool": pool_args(Path("<tmp>"))["pools"][0] | {"models": MODELS},
        "cold_vs_warm": cold,
        "random_traffic": traffic | counter_deltas(before, after),
        "model_load_seconds_p50": round(statistics.median(loads), 3) if loads else None,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if traffic["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
