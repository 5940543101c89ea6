"""Closed-loop gRPC load: exactly C concurrent callers, one fixed unary call, loopback only.

The gRPC counterpart of ``bench/loadgen.py`` (wrk speaks HTTP/1.1 only): each caller sends
the same request message, waits for the answer and sends it again, for a fixed time, over
one HTTP/2 connection per ``--channels`` (gRPC multiplexes the callers on it, as its clients
do). Requests and answers stay bytes (no message classes on the hot path), so the generator
costs little CPU; its own CPU is reported, as wrk's is. ``run`` starts it in a child
process (its own event loop and CPU) and returns a result shaped like ``loadgen.run``'s.

    python -m bench.grpc_load --target 127.0.0.1:9000 \\
        --method /inference.GRPCInferenceService/ModelInfer --body-file request.bin \\
        --concurrency 64 --duration 30

``infer_request`` builds an Open Inference Protocol ``ModelInferRequest`` (raw tensors, as
``tritonclient.grpc`` sends them) for this service or Triton alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.loadgen import check_loopback_host

CALL_TIMEOUT_S = 30  # a call unanswered this long counts as a DEADLINE_EXCEEDED error
MARKER = "BENCH_JSON "
INFER = "/inference.GRPCInferenceService/ModelInfer"


@dataclass(frozen=True)
class Request:
    """The exact call every caller makes: ``method`` on ``target`` with ``body``."""

    target: str  # host:port
    method: str  # /package.Service/Method
    body: bytes
    metadata: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The request as recorded in the results."""
        return {
            "protocol": "grpc",
            "target": self.target,
            "method": self.method,
            "metadata": dict(self.metadata),
            "body_bytes": len(self.body),
        }


def infer_request(model: str, inputs: dict[str, Any], version: str = "") -> bytes:
    """A ``ModelInferRequest`` with every input in ``raw_input_contents`` (numpy arrays)."""
    import numpy as np
    import tritonclient.grpc as triton

    request = triton.service_pb2.ModelInferRequest(model_name=model, model_version=version)
    for name, array in inputs.items():
        array = np.asarray(array)
        datatype = triton.np_to_triton_dtype(array.dtype)
        infer_input = triton.InferInput(name, list(array.shape), datatype)
        infer_input.set_data_from_numpy(array)
        request.inputs.append(infer_input._get_tensor())
        request.raw_input_contents.append(infer_input._get_content())
    return request.SerializeToString()


def check_loopback(target: str) -> None:
    """Refuse any target that is not this machine's loopback."""
    check_loopback_host(target.rsplit(":", 1)[0].strip("[]"))


def run(request: Request, concurrency: int, duration_s: float, channels: int = 1) -> dict[str, Any]:
    """One closed-loop run in a child process; throughput, latency percentiles (ms), errors
    and the generator's CPU seconds. ``ok`` is false when nothing or not everything was OK."""
    check_loopback(request.target)
    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as tmp:
        body = Path(tmp) / "request.bin"
        body.write_bytes(request.body)
        argv = [
            sys.executable,
            "-m",
            "bench.grpc_load",
            "--target",
            request.target,
            "--method",
            request.method,
            "--body-file",
            str(body),
            "--concurrency",
            str(concurrency),
            "--duration",
            str(duration_s),
            "--channels",
            str(channels),
        ]
        for key, value in request.metadata:
            argv += ["--metadata", f"{key}={value}"]
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=duration_s + CALL_TIMEOUT_S + 60,
            cwd=Path(__file__).resolve().parents[1],
        )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(MARKER)), None)
    base = {"argv": argv[3:], "request": request.to_json()}
    if proc.returncode != 0 or line is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {**base, "ok": False, "failure": f"exit {proc.returncode}: {' | '.join(tail)}"}
    return {**base, **json.loads(line[len(MARKER) :])}


async def load(
    request: Request, concurrency: int, duration_s: float, channels: int
) -> dict[str, Any]:
    """The closed loop itself (in this process)."""
    import grpc

    opened = [grpc.aio.insecure_channel(request.target) for _ in range(max(1, channels))]
    calls = [
        channel.unary_unary(request.method, request_serializer=None, response_deserializer=None)
        for channel in opened
    ]
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    samples: list[str] = []
    metadata = request.metadata or None
    started = time.monotonic()
    stop_at = started + duration_s

    async def caller(index: int) -> None:
        call = calls[index % len(calls)]
        while time.monotonic() < stop_at:
            sent = time.monotonic()
            try:
                await call(request.body, timeout=CALL_TIMEOUT_S, metadata=metadata)
            except grpc.aio.AioRpcError as error:
                failures[error.code().name] += 1
                if not samples:
                    samples.append((error.details() or "")[:300])
                continue
            latencies.append(time.monotonic() - sent)

    try:
        await asyncio.gather(*(caller(i) for i in range(concurrency)))
    finally:
        for channel in opened:
            await channel.close()
    return summarize(latencies, failures, samples, time.monotonic() - started)


def summarize(
    latencies: list[float], failures: Counter[str], samples: list[str], seconds: float
) -> dict[str, Any]:
    """Counts, rates and latency percentiles (ms) of OK calls, in ``loadgen.run``'s shape."""
    ordered = sorted(latencies)

    def percentile(p: float) -> float:
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    ok, errors = len(ordered), sum(failures.values())
    result: dict[str, Any] = {
        "requests": ok + errors,
        "duration_s": round(seconds, 3),
        "rps": (ok + errors) / seconds if seconds else 0.0,
        "ok_rps": ok / seconds if seconds else 0.0,
        "latency_ms": {
            "mean": round(sum(ordered) / ok * 1000, 3) if ok else 0.0,
            "max": round(ordered[-1] * 1000, 3) if ok else 0.0,
            **{f"p{p}": round(percentile(p), 3) for p in (50, 75, 90, 99)},
        },
        "errors": errors,
        "non_ok": dict(failures),
        "non_ok_sample": samples[0] if samples else "",
        "ok": ok > 0 and errors == 0,
    }
    if not result["ok"]:
        result["failure"] = (
            "no call completed" if ok + errors == 0 else f"{errors} error(s): {dict(failures)}"
        )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="host:port (loopback only)")
    parser.add_argument("--method", default=INFER, help="/package.Service/Method (%(default)s)")
    parser.add_argument("--body-file", type=Path, required=True, help="the serialized request")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("--channels", type=int, default=1, help="HTTP/2 connections")
    parser.add_argument("--metadata", action="append", default=[], help="key=value, repeatable")
    args = parser.parse_args(argv)
    check_loopback(args.target)
    metadata = tuple(tuple(item.split("=", 1)) for item in args.metadata)
    request = Request(args.target, args.method, args.body_file.read_bytes(), metadata)  # type: ignore[arg-type]
    before = resource.getrusage(resource.RUSAGE_SELF)
    result = asyncio.run(load(request, args.concurrency, args.duration, args.channels))
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result["client_cpu_s"] = round(cpu_s, 3)
    print(MARKER + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
