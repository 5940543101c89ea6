"""Load test: fixed concurrency over the default models, bounded in time and request count.

    python -m bench.load_test --duration 60 --concurrency 128 --out bench/results/load_test.json

Against the service ``make run`` starts (``serve run serve_config.yaml``) on 127.0.0.1:8000;
loopback only. The clients are spread evenly over the models (``digits`` through TF Serving
predict, ``minilm`` through OpenAI embeddings, ``tiny-gpt2`` through OpenAI completions).
Every request carries a deadline (``X-Request-Timeout-Seconds``) and a longer client timeout;
a request still unanswered at the client timeout counts as hung. The run passes when no
request hung and every error is explicit backpressure (503/429 saying "overloaded").
Writes p50/p90/p99 latency and throughput per model, the status codes, and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.loadgen import check_loopback

DIGIT = [float((i * 7) % 17) for i in range(64)]  # one 8x8 image, pixel values 0..16
REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "digits": ("/v1/models/digits:predict", {"instances": [DIGIT]}),
    "minilm": (
        "/v1/embeddings",
        {"model": "minilm", "input": "A load test sends this sentence again and again."},
    ),
    "tiny-gpt2": (
        "/v1/completions",
        {"model": "tiny-gpt2", "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0},
    ),
}


@dataclass
class ModelResult:
    latencies_ms: list[float] = field(default_factory=list)  # of 200 answers
    codes: Counter = field(default_factory=Counter)  # status code (or "hung"/"connection")
    backpressure: int = 0
    other_errors: list[str] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100), nearest-rank on the sorted values; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def is_backpressure(status: int, text: str) -> bool:
    return status in (429, 503) and "overloaded" in text


async def run(
    url: str,
    models: list[str],
    duration_s: float,
    concurrency: int,
    max_requests: int,
    request_timeout_s: float,
) -> dict[str, Any]:
    import aiohttp

    try:
        check_loopback(url)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    results = {name: ModelResult() for name in models}
    sent = 0
    deadline = time.monotonic() + duration_s
    # Far past the server's deadline: a request answered by then was not hung.
    client_timeout = aiohttp.ClientTimeout(total=request_timeout_s + 30)
    headers = {"X-Request-Timeout-Seconds": str(request_timeout_s)}
    connector = aiohttp.TCPConnector(limit=concurrency)

    async def worker(index: int, session: aiohttp.ClientSession) -> None:
        nonlocal sent
        name = models[index % len(models)]
        path, body = REQUESTS[name]
        result = results[name]
        while time.monotonic() < deadline and sent < max_requests:
            sent += 1
            started = time.monotonic()
            try:
                async with session.post(url + path, json=body, headers=headers) as response:
                    text = await response.text()
                    status = response.status
            except asyncio.TimeoutError:
                result.codes["hung"] += 1
                continue
            except aiohttp.ClientError as exc:
                result.codes["connection"] += 1
                result.other_errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            result.codes[status] += 1
            if status == 200:
                result.latencies_ms.append((time.monotonic() - started) * 1000)
            elif is_backpressure(status, text):
                result.backpressure += 1
            else:
                result.other_errors.append(f"{status}: {text[:200]}")

    started = time.monotonic()
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        await asyncio.gather(*(worker(i, session) for i in range(concurrency)))
    elapsed = time.monotonic() - started
    return summarize(results, elapsed, url, duration_s, concurrency, max_requests)


def summarize(
    results: dict[str, ModelResult],
    elapsed: float,
    url: str,
    duration_s: float,
    concurrency: int,
    max_requests: int,
) -> dict[str, Any]:
    per_model = {}
    for name, result in results.items():
        lat = result.latencies_ms
        per_model[name] = {
            "requests": sum(result.codes.values()),
            "ok": len(lat),
            "ok_per_s": round(len(lat) / elapsed, 2) if elapsed else None,
            "p50_ms": _round(percentile(lat, 50)),
            "p90_ms": _round(percentile(lat, 90)),
            "p99_ms": _round(percentile(lat, 99)),
            "max_ms": _round(max(lat) if lat else None),
            "codes": {str(k): v for k, v in sorted(result.codes.items(), key=str)},
            "backpressure": result.backpressure,
            "other_errors": len(result.other_errors),
            "error_samples": result.other_errors[:5],
        }
    hung = sum(r.codes["hung"] for r in results.values())
    other = sum(len(r.other_errors) for r in results.values())
    return {
        "command": "python -m bench.load_test " + " ".join(sys.argv[1:]),
        "url": url,
        "duration_s": duration_s,
        "elapsed_s": round(elapsed, 2),
        "concurrency": concurrency,
        "max_requests": max_requests,
        "models": per_model,
        "total_requests": sum(m["requests"] for m in per_model.values()),
        "hung": hung,
        "errors_other_than_backpressure": other,
        "passed": hung == 0 and other == 0,
        "machine": machine(),
    }


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    try:
        with open("/proc/meminfo") as meminfo:
            info["mem_total"] = meminfo.readline().split(":", 1)[1].strip()
        with open("/proc/cpuinfo") as cpuinfo:
            models = [ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")]
        info["cpu_model"] = models[0] if models else None
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    try:
        import ray

        info["ray"] = ray.__version__
    except ImportError:
        pass
    return info


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--models", default=",".join(REQUESTS), help="comma-separated")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--max-requests", type=int, default=500_000, help="bound on the count")
    parser.add_argument("--request-timeout", type=float, default=30.0, help="server deadline")
    parser.add_argument("--out", type=Path, default=Path("bench/results/load_test.json"))
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(REQUESTS))
    if unknown:
        parser.error(f"unknown models {unknown} (known: {', '.join(REQUESTS)})")
    report = asyncio.run(
        run(
            args.url.rstrip("/"),
            models,
            args.duration,
            args.concurrency,
            args.max_requests,
            args.request_timeout,
        )
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, m in report["models"].items():
        print(
            f"{name:10s} ok {m['ok']:6d} ({m['ok_per_s']}/s)  p50 {m['p50_ms']} ms"
            f"  p99 {m['p99_ms']} ms  backpressure {m['backpressure']}"
            f"  other errors {m['other_errors']}"
        )
    print(
        f"hung {report['hung']}, errors other than backpressure"
        f" {report['errors_other_than_backpressure']}: {'PASS' if report['passed'] else 'FAIL'}"
        f" -> {args.out}"
    )
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
