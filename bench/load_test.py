"""Load test: fixed concurrency over the default models, bounded in time and request count.

    python -m bench.load_test --duration 60 --concurrency 128 --out bench/results/load_test.json
    python -m bench.load_test --bad-fraction 0.1 --out bench/results/load_test_mixed.json

Against the service ``make run`` starts (``serve run serve_config.yaml``) on 127.0.0.1:8000;
loopback only. The clients are spread evenly over the models (``digits`` through TF Serving
predict, ``minilm`` through OpenAI embeddings, ``tiny-gpt2`` through OpenAI completions).
Every request carries a deadline (``X-Request-Timeout-Seconds``) and a longer client timeout;
a request still unanswered at the client timeout counts as hung. The run passes when no
request hung and every error is explicit backpressure (503/429 saying "overloaded").
Writes p50/p90/p99 latency and throughput per model, the status codes, and the machine.

``--bad-fraction 0.1`` mixes bad requests into the same traffic: one request in ten (spread
evenly over each client's requests) is one of ``bench/bad_requests.py`` (every class issue
15 names: malformed JSON, deep nesting, huge integers, lone surrogates, invalid UTF-8, bad
shapes, out-of-range numbers, bad version segments and headers, oversized bodies, too many
instances), in turn. Then the run passes only when no good request failed or got a wrong
answer (digits' probabilities and minilm's embedding against the one answer fetched before
the load; tiny-gpt2's completion in its shape), no answer was a 500, every bad request got a
4xx, and no model replica restarted (replica ids and pids from ``/v2/models/{m}/stats``
before and after).

``--hostile DIR`` adds issue 25's hostile traffic beside the good one (``bench/hostile.py``):
8 stalled uploads, oversized gRPC calls, V2 parameters nested 500 deep, clients that leave
mid-generation, and a broken ``digits`` version written into the polled repository under DIR
(start the server from ``python -m bench.hostile --out DIR``'s config). It passes when no good
request failed, nothing was answered 500, each hostile kind got its expected answer, no model
replica restarted, ``digits`` reports the broken version and keeps serving, and no serving
process grew by more than ``MEMORY_BOUND_MIB``. The result gains a ``hostile`` section.

The result of ``--bad-fraction`` gains a ``mixed`` section:

    "mixed": {"bad_fraction": 0.1,
              "good": {"requests", "ok", "failed", "wrong_answers", "failed_samples"},
              "bad": {"requests", "not_4xx", "by_kind": {kind: {"requests", "codes",
                      "samples"}}},
              "answers_500": n,
              "replicas": {"before": {model: [[id, pid], ...]}, "after": {...},
                           "restarted": [model, ...]}}
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

from bench import hostile as hostile_traffic
from bench.bad_requests import DEFAULT_MAX_REQUEST_BYTES, BadRequest, catalogue
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


# The most any serving process may grow (peak over its start) during a hostile run.
MEMORY_BOUND_MIB = 300
# What each kind of hostile request must get (bench/hostile.py).
HOSTILE_EXPECTED = {
    "stalled_uploads": {"408"},
    "oversized_grpc": {"RESOURCE_EXHAUSTED"},
    "deep_parameters": {"400"},
    "departed_clients": {"left", "200"},
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


def is_bad_turn(count: int, fraction: float) -> bool:
    """Whether request number ``count`` (from 0) of a client is a bad one: exactly
    ``fraction`` of any run of requests, spread evenly (0.1: numbers 9, 19, 29, ...)."""
    if fraction <= 0:
        return False
    return math.floor((count + 1) * fraction) > math.floor(count * fraction)


def answer_problem(model: str, text: str, reference: Any) -> str | None:
    """What is wrong with a good request's 200 answer (``text``), or None. ``reference`` is
    the answer to the same request fetched alone before the load (batching may move the
    last bits)."""
    try:
        answer = json.loads(text)
        if model == "digits":
            got, want = answer["predictions"][0], reference["predictions"][0]
            close = len(got) == len(want) and all(abs(g - w) < 1e-4 for g, w in zip(got, want))
            return None if close else f"digits predictions differ: {got[:3]}..."
        if model == "minilm":
            got, want = answer["data"][0]["embedding"], reference["data"][0]["embedding"]
            close = len(got) == len(want) and all(abs(g - w) < 1e-3 for g, w in zip(got, want))
            return None if close else f"minilm embedding differs: {got[:3]}..."
        if model == "tiny-gpt2":
            choice = answer["choices"][0]
            # Random weights: near-ties may flip under other batch mates, so the shape only.
            shaped = isinstance(choice["text"], str) and answer["usage"]["completion_tokens"] > 0
            return None if shaped else f"tiny-gpt2 completion malformed: {answer}"[:200]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        return f"{model} answer malformed ({type(exc).__name__}): {text[:150]}"
    return None


def restarted(before: dict[str, list], after: dict[str, list]) -> list[str]:
    """Models whose replicas (``[id, pid]`` pairs) are not the same after the load."""
    return sorted(m for m in before if sorted(before[m]) != sorted(after.get(m, [])))


@dataclass
class MixedResult:
    """The mixed mode's tally: good requests' failures, bad requests' answers by class."""

    good_requests: int = 0
    good_failed: list[str] = field(default_factory=list)
    wrong_answers: int = 0
    bad_codes: dict[str, Counter] = field(default_factory=dict)
    bad_samples: dict[str, list[str]] = field(default_factory=dict)
    answers_500: int = 0

    def bad(self, kind: str, code: int | str, text: str) -> None:
        self.bad_codes.setdefault(kind, Counter())[code] += 1
        samples = self.bad_samples.setdefault(kind, [])
        if len(samples) < 3 and text not in samples:
            samples.append(text[:200])

    def to_json(self, bad_fraction: float, replicas: dict[str, Any]) -> dict[str, Any]:
        kinds = {
            kind: {
                "requests": sum(codes.values()),
                "codes": {str(k): v for k, v in sorted(codes.items(), key=str)},
                "samples": self.bad_samples.get(kind, []),
            }
            for kind, codes in sorted(self.bad_codes.items())
        }
        not_4xx = sum(
            n
            for codes in self.bad_codes.values()
            for code, n in codes.items()
            if not (isinstance(code, int) and 400 <= code < 500)
        )
        return {
            "bad_fraction": bad_fraction,
            "good": {
                "requests": self.good_requests,
                "ok": self.good_requests - len(self.good_failed),
                "failed": len(self.good_failed),
                "wrong_answers": self.wrong_answers,
                "failed_samples": self.good_failed[:5],
            },
            "bad": {
                "requests": sum(k["requests"] for k in kinds.values()),
                "not_4xx": not_4xx,
                "by_kind": kinds,
            },
            "answers_500": self.answers_500,
            "replicas": replicas,
        }

    def passed(self, replicas: dict[str, Any], mixed: dict[str, Any]) -> bool:
        return (
            not self.good_failed
            and self.answers_500 == 0
            and mixed["bad"]["not_4xx"] == 0
            and not replicas["restarted"]
        )


async def run(
    url: str,
    models: list[str],
    duration_s: float,
    concurrency: int,
    max_requests: int,
    request_timeout_s: float,
    bad_fraction: float = 0.0,
    bad_requests: list[BadRequest] | None = None,
    hostile: Path | None = None,
    grpc_target: str = "127.0.0.1:9000",
    server_pid: int | None = None,
) -> dict[str, Any]:
    import aiohttp
    import yarl

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
    mixed = MixedResult() if bad_fraction > 0 or hostile is not None else None
    bad_requests = bad_requests if bad_requests is not None else catalogue()
    turn = 0  # the next bad request, in turn over the catalogue
    references: dict[str, Any] = {}

    async def send_bad(session: aiohttp.ClientSession) -> None:
        nonlocal turn
        assert mixed is not None
        bad = bad_requests[turn % len(bad_requests)]
        turn += 1
        target = yarl.URL(url + bad.path, encoded=True)  # sent as written, not normalised
        try:
            async with session.request(
                bad.method, target, data=bad.body, headers={**bad.headers, **headers}
            ) as response:
                text = await response.text(errors="replace")
                status = response.status
        except TimeoutError:
            mixed.bad(bad.kind, "hung", "")
            return
        except aiohttp.ClientError as exc:
            mixed.bad(bad.kind, "connection", f"{type(exc).__name__}: {exc}")
            return
        mixed.answers_500 += status == 500
        mixed.bad(bad.kind, status, text)

    async def worker(index: int, session: aiohttp.ClientSession) -> None:
        nonlocal sent
        name = models[index % len(models)]
        path, body = REQUESTS[name]
        result = results[name]
        count = index  # each client starts its bad turns elsewhere
        while time.monotonic() < deadline and sent < max_requests:
            sent += 1
            count += 1
            if mixed is not None and is_bad_turn(count, bad_fraction):
                await send_bad(session)
                continue
            started = time.monotonic()
            try:
                async with session.post(url + path, json=body, headers=headers) as response:
                    text = await response.text()
                    status = response.status
            except TimeoutError:
                result.codes["hung"] += 1
                _good_failed(mixed, f"{name}: hung")
                continue
            except aiohttp.ClientError as exc:
                result.codes["connection"] += 1
                result.other_errors.append(f"{type(exc).__name__}: {exc}"[:200])
                _good_failed(mixed, f"{name}: {type(exc).__name__}: {exc}")
                continue
            result.codes[status] += 1
            if mixed is not None:
                mixed.good_requests += 1
                mixed.answers_500 += status == 500
            if status == 200:
                result.latencies_ms.append((time.monotonic() - started) * 1000)
                problem = None
                if mixed is not None:
                    problem = answer_problem(name, text, references[name])
                if problem is not None:
                    mixed.wrong_answers += 1
                    _good_failed(mixed, problem, counted=True)
                continue
            if is_backpressure(status, text):
                result.backpressure += 1
            else:
                result.other_errors.append(f"{status}: {text[:200]}")
            _good_failed(mixed, f"{name}: {status}: {text[:200]}", counted=True)

    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        replicas: dict[str, Any] = {}
        if mixed is not None:
            for name in models:  # one answer each, alone: what the loaded answers must match
                path, body = REQUESTS[name]
                async with session.post(url + path, json=body, headers=headers) as response:
                    response.raise_for_status()
                    references[name] = await response.json()
            replicas["before"] = await replica_ids(session, url, models)
        started = time.monotonic()
        hostile_report: dict[str, Any] | None = None
        if hostile is None:
            await asyncio.gather(*(worker(i, session) for i in range(concurrency)))
        else:
            with hostile_traffic.ProcessMemory(server_pid) as memory:
                outcome = await asyncio.gather(
                    asyncio.gather(*(worker(i, session) for i in range(concurrency))),
                    _hostile(url, grpc_target, hostile, deadline),
                )
            hostile_report = {**outcome[1], "memory": memory.report()}
        elapsed = time.monotonic() - started
        if mixed is not None:
            replicas["after"] = await replica_ids(session, url, models)
            replicas["restarted"] = restarted(replicas["before"], replicas["after"])
    report = summarize(results, elapsed, url, duration_s, concurrency, max_requests)
    if mixed is not None:
        report["mixed"] = mixed.to_json(bad_fraction, replicas)
        report["passed"] = report["passed"] and mixed.passed(replicas, report["mixed"])
    if hostile_report is not None:
        hostile_report["problems"] = hostile_problems(hostile_report)
        report["hostile"] = hostile_report
        report["passed"] = report["passed"] and not hostile_report["problems"]
    return report


async def _hostile(url: str, grpc_target: str, repository: Path, until: float) -> dict[str, Any]:
    """Every hostile kind in a loop of its own until ``until``; their tallies. Its own
    connections: the good traffic's pool is as large as its concurrency."""
    import aiohttp

    host, port = url.split("//", 1)[1].rsplit(":", 1)
    tallies = {kind: hostile_traffic.Tally() for kind in HOSTILE_EXPECTED}
    async with aiohttp.ClientSession() as session:
        version = await asyncio.gather(
            hostile_traffic.stalled_uploads(host, int(port), until, tallies["stalled_uploads"]),
            asyncio.to_thread(
                hostile_traffic.oversized_grpc, grpc_target, until, tallies["oversized_grpc"]
            ),
            hostile_traffic.deep_parameters(session, url, until, tallies["deep_parameters"]),
            hostile_traffic.departed_clients(session, url, until, tallies["departed_clients"]),
            hostile_traffic.broken_version(session, url, repository, 10.0, until),
        )
    return {
        "kinds": {kind: tally.to_json() for kind, tally in tallies.items()},
        "broken_version": version[-1],
        "memory_bound_mib": MEMORY_BOUND_MIB,
    }


def hostile_problems(report: dict[str, Any]) -> list[str]:
    """What the hostile run got that it should not have."""
    problems = []
    for kind, expected in HOSTILE_EXPECTED.items():
        codes = report["kinds"][kind]["codes"]
        if not codes:
            problems.append(f"{kind}: none sent")
        unexpected = {code: n for code, n in codes.items() if code not in expected}
        if unexpected:
            problems.append(f"{kind}: got {unexpected}, expected only {sorted(expected)}")
    broken = report["broken_version"]
    states = {
        str(v.get("version")): v.get("state")
        for v in (broken["status"] or {}).get("model_version_status", [])
    }
    if states.get(str(broken["version"])) != "END":
        problems.append(f"digits: broken version {broken['version']} not reported END: {states}")
    if "AVAILABLE" not in states.values():
        problems.append(f"digits: no version AVAILABLE after the broken one: {states}")
    for process in report["memory"]:
        if process["growth_mib"] > MEMORY_BOUND_MIB:
            problems.append(
                f"{process['name']} (pid {process['pid']}) grew {process['growth_mib']} MiB"
            )
    return problems


def _good_failed(mixed: MixedResult | None, problem: str, counted: bool = False) -> None:
    """Tally a good request that failed (``counted``: already in ``good_requests``)."""
    if mixed is None:
        return
    mixed.good_requests += not counted
    mixed.good_failed.append(problem[:200])


async def replica_ids(session: Any, url: str, models: list[str], asks: int = 24) -> dict:
    """Each model's replicas as ``[id, pid]`` pairs, from ``/v2/models/{m}/stats`` calls.

    Each call answers for one replica, picked at random: 24 asks miss one of the default
    fleet's two minilm replicas once in 2**23 runs.
    """
    found: dict[str, list] = {}
    for name in models:
        seen = set()
        for _ in range(asks):
            async with session.get(f"{url}/v2/models/{name}/stats") as response:
                response.raise_for_status()
                replica = (await response.json())["replica"]
                seen.add((replica["id"], replica["pid"]))
        found[name] = sorted([list(pair) for pair in seen])
    return found


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
    parser.add_argument(
        "--bad-fraction",
        type=float,
        default=0.0,
        help="mix this share of bad requests (bench/bad_requests.py) into the traffic",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        help="the server's ingress.max_request_bytes (the oversized bad request passes it)",
    )
    parser.add_argument(
        "--hostile",
        type=Path,
        default=None,
        help="add issue 25's hostile traffic; DIR as written by `python -m bench.hostile`",
    )
    parser.add_argument("--grpc", default="127.0.0.1:9000", help="gRPC target (--hostile)")
    parser.add_argument(
        "--server-pid",
        type=int,
        default=None,
        help="`serve run`'s pid: memory of it and its descendants (--hostile; default: every"
        " Ray and HAProxy process here)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.bad_fraction < 1:
        parser.error("--bad-fraction must be at least 0 and below 1")
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
            args.bad_fraction,
            catalogue(args.max_request_bytes) if args.bad_fraction > 0 else None,
            args.hostile / "repository" if args.hostile is not None else None,
            args.grpc,
            args.server_pid,
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
    if "mixed" in report:
        mixed = report["mixed"]
        print(
            f"mixed: good {mixed['good']['requests']} (failed {mixed['good']['failed']}),"
            f" bad {mixed['bad']['requests']} (not 4xx {mixed['bad']['not_4xx']}),"
            f" answers of 500 {mixed['answers_500']},"
            f" restarted {mixed['replicas']['restarted'] or 'none'}"
        )
    if "hostile" in report:
        for kind, tally in report["hostile"]["kinds"].items():
            print(f"hostile {kind}: {tally['codes']}")
        grown = report["hostile"]["memory"][:1]
        print(f"largest memory growth: {grown}; problems: {report['hostile']['problems']}")
    print(
        f"hung {report['hung']}, errors other than backpressure"
        f" {report['errors_other_than_backpressure']}: {'PASS' if report['passed'] else 'FAIL'}"
        f" -> {args.out}"
    )
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
