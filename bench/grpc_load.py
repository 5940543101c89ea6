"""Closed-loop gRPC load: exactly C concurrent calls, one fixed unary call, loopback only.

The gRPC counterpart of ``bench/loadgen.py`` (wrk speaks HTTP/1.1 only), with two generators
behind the same call shape (a ``Request``, C, seconds, HTTP/2 connections) and the same
result dict, each reporting its own CPU (``client_cpu_s``) as ``loadgen.run`` reports wrk's:

* ``run_h2load`` (``bench.compare``'s default): ``h2load`` (nghttp2, C like wrk) posts the
  gRPC frame of the message on C concurrent streams (``-c channels -m C/channels``), closed
  loop, for a fixed time. h2load reads HTTP statuses, not ``grpc-status``: a gRPC error is a
  200 with no message, so every answer must also carry a message as long as the answer
  ``bench.compare`` checked before loading. Percentiles come from its per-request log.
* ``run`` (``python``): C callers of ``grpc.aio`` in a child process (its own event loop
  and CPU), each sending the request, waiting for the answer and sending it again, over one
  HTTP/2 connection per ``--channels`` (gRPC multiplexes the callers on it, as its clients
  do). Requests and answers stay bytes (no message classes on the hot path), yet it costs
  about 0.3 ms of CPU per call, taken from the server's cores on a small machine. Its
  child's command line:

    python -m bench.grpc_load --target 127.0.0.1:9000 \\
        --method /inference.GRPCInferenceService/ModelInfer --body-file request.bin \\
        --concurrency 64 --duration 30

``infer_request`` builds an Open Inference Protocol ``ModelInferRequest`` (raw tensors, as
``tritonclient.grpc`` sends them) for this service or Triton alike; ``predict_request`` a TF
Serving ``PredictRequest`` as TF Serving's Python clients build it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import shutil
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
GENERATORS = ("h2load", "python")
PYTHON_DESCRIPTION = "bench.grpc_load (grpc.aio, closed loop, raw bytes)"
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")


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


def predict_request(model: str, inputs: dict[str, Any], signature: str = "") -> bytes:
    """A TF Serving ``PredictRequest`` (``tf.make_tensor_proto`` of each numpy array, as TF
    Serving's Python clients send it); no signature name: the server's default one."""
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if signature:
        request.model_spec.signature_name = signature
    for name, array in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(array)))
    return request.SerializeToString()


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: not compressed (0), the length (4 bytes, big-endian),
    the serialized message; what h2load posts as the body."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


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
    ok, errors = len(latencies), sum(failures.values())
    result: dict[str, Any] = {
        "requests": ok + errors,
        "duration_s": round(seconds, 3),
        "rps": (ok + errors) / seconds if seconds else 0.0,
        "ok_rps": ok / seconds if seconds else 0.0,
        "latency_ms": latency_ms(latencies),
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


def latency_ms(latencies: list[float]) -> dict[str, float]:
    """Mean, max and p50/p75/p90/p99 in ms of latencies in seconds (both generators): the
    p-th percentile is the sorted value at index ``int(p / 100 * n)``."""
    ordered = sorted(latencies)
    n = len(ordered)

    def percentile(p: float) -> float:
        return ordered[min(n - 1, int(p / 100 * n))] * 1000 if n else 0.0

    return {
        "mean": round(sum(ordered) / n * 1000, 3) if n else 0.0,
        "max": round(ordered[-1] * 1000, 3) if n else 0.0,
        **{f"p{p}": round(percentile(p), 3) for p in (50, 75, 90, 99)},
    }


# --- h2load -----------------------------------------------------------------------------------


def h2load_path() -> str | None:
    """The ``h2load`` binary (Debian's ``nghttp2-client``), or None."""
    return shutil.which("h2load")


def h2load_version() -> str:
    """``h2load``'s version line, e.g. ``h2load nghttp2/1.52.0``."""
    path = h2load_path()
    if path is None:
        return "h2load: not installed"
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).strip().splitlines()[0]


def describe(generator: str) -> str:
    """The generator as the results' settings and the report name it."""
    if generator == "python":
        return PYTHON_DESCRIPTION
    return (
        f"{h2load_version()} (closed loop: C concurrent streams, the gRPC frame posted with"
        " content-type application/grpc; grpc-status not seen by h2load: one answer checked"
        " before loading and every answer's message length checked)"
    )


def streams_per_connection(concurrency: int, channels: int) -> tuple[int, int]:
    """(connections, streams per connection) with exactly ``concurrency`` calls in flight:
    h2load gives every connection the same number of streams, so ``channels`` must divide
    C (C = 1 uses one connection whatever ``channels`` says, as the Python generator does)."""
    connections = max(1, min(channels, concurrency))
    if concurrency % connections:
        raise ValueError(
            f"{concurrency} calls cannot be spread evenly over {connections} HTTP/2"
            " connections (h2load: -m is per connection): pick a --grpc-channels that divides"
            " every --grpc-concurrency"
        )
    return connections, concurrency // connections


def h2load_argv(
    h2load: str,
    request: Request,
    concurrency: int,
    duration_s: float,
    channels: int,
    body_file: Path,
    log_file: Path,
) -> list[str]:
    """The h2load command line for one closed-loop run."""
    connections, streams = streams_per_connection(concurrency, channels)
    argv = [
        h2load,
        f"--duration={max(1, round(duration_s))}",  # whole seconds, as wrk's -d
        f"--clients={connections}",
        f"--max-concurrent-streams={streams}",
        "--threads=1",
        f"--connection-inactivity-timeout={CALL_TIMEOUT_S}",
        f"--data={body_file}",
        f"--log-file={log_file}",
    ]
    for header in GRPC_HEADERS:
        argv += ["--header", header]
    for key, value in request.metadata:
        argv += ["--header", f"{key}: {value}"]
    return [*argv, f"http://{request.target}{request.method}"]


def run_h2load(
    request: Request,
    concurrency: int,
    duration_s: float,
    channels: int = 1,
    answer_bytes: int | None = None,
) -> dict[str, Any]:
    """One closed-loop h2load run, in ``run``'s result shape. ``answer_bytes``: the length of
    a correct answer message; answers whose messages total less count as errors."""
    check_loopback(request.target)
    path = h2load_path()
    if path is None:
        raise FileNotFoundError(
            "h2load is not installed: run `make bench-setup` (apt-get install nghttp2-client)"
        )
    with tempfile.TemporaryDirectory(prefix="bench-h2load-") as tmp:
        body, log_file = Path(tmp) / "request.grpc", Path(tmp) / "requests.log"
        body.write_bytes(grpc_frame(request.body))
        argv = h2load_argv(path, request, concurrency, duration_s, channels, body, log_file)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration_s + CALL_TIMEOUT_S + 60
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        log_text = log_file.read_text() if log_file.exists() else ""
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result = parse_h2load(proc.stdout, proc.stderr, proc.returncode, log_text, cpu_s, answer_bytes)
    # The temporary paths mean nothing once gone: the command as recorded names them only.
    recorded = [a for a in argv[1:] if not a.startswith(("--data=", "--log-file="))]
    return {"argv": ["h2load", *recorded], "request": request.to_json(), **result}


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _count(pattern: str, text: str) -> int:
    found = re.search(pattern, text, re.MULTILINE)
    return int(found.group(1)) if found else 0


def parse_h2load(
    stdout: str,
    stderr: str,
    returncode: int,
    log_text: str,
    client_cpu_s: float = 0.0,
    answer_bytes: int | None = None,
) -> dict[str, Any]:
    """h2load's summary (counts, duration, bytes) and its per-request log (latencies of the
    2xx answers) as ``run``'s result dict.

    Errors: every request done but not a 2xx/3xx (h2load's ``failed``: HTTP errors, reset
    or timed-out streams), and, given ``answer_bytes``, the 2xx answers missing from the
    DATA received (a gRPC error is a 200 with ``grpc-status`` in trailers and no message).
    That last count is a lower bound: data of calls still in flight at the end counts too.
    """
    finished = re.search(r"^finished in ([\d.]+)(us|ms|s|m|h),", stdout, re.MULTILINE)
    counts = re.search(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed,"
        r" (\d+) errored, (\d+) timeout",
        stdout,
        re.MULTILINE,
    )
    client = {"client_cpu_s": round(client_cpu_s, 3)}
    if finished is None or counts is None:
        tail = (stderr or stdout).strip().splitlines()[-5:]
        return {**client, "ok": False, "failure": f"h2load exit {returncode}: {' | '.join(tail)}"}
    seconds = float(finished.group(1)) * _UNITS[finished.group(2)]
    total, started, done, succeeded, failed, errored, timeout = map(int, counts.groups())
    statuses = {f"{k}xx": _count(rf"^status codes:.*?(\d+) {k}xx", stdout) for k in (2, 3, 4, 5)}
    data_bytes = _count(r"^traffic:.*\((\d+)\) data", stdout)
    latencies = []
    for line in log_text.splitlines():
        fields = line.split("\t")
        if len(fields) >= 3 and fields[1].isdigit() and 200 <= int(fields[1]) < 400:
            latencies.append(int(fields[2]) / 1e6)
    failures: Counter[str] = Counter()
    for key in ("4xx", "5xx"):
        if statuses[key]:
            failures[f"HTTP_{key}"] = statuses[key]
    if errored - timeout > 0:
        failures["STREAM_ERROR"] = errored - timeout  # reset, refused or lost streams
    if timeout:
        failures["TIMEOUT"] = timeout
    if done - succeeded > sum(failures.values()):  # failed, but neither of the above
        failures["FAILED"] = done - succeeded - sum(failures.values())
    sample = ""
    if answer_bytes is not None and succeeded:
        full_answers = data_bytes // (answer_bytes + 5)
        if full_answers < succeeded:
            failures["NO_MESSAGE"] = succeeded - full_answers
            sample = (
                f"{succeeded - full_answers} of {succeeded} 2xx answers carried no"
                f" {answer_bytes}-byte message ({data_bytes} bytes of DATA): gRPC errors"
                " (grpc-status in trailers, which h2load does not read)"
            )
    ok = succeeded - failures["NO_MESSAGE"]
    errors = done - ok
    result: dict[str, Any] = {
        "requests": done,
        "duration_s": round(seconds, 3),
        "rps": done / seconds if seconds else 0.0,
        "ok_rps": ok / seconds if seconds else 0.0,
        "latency_ms": latency_ms(latencies),
        "errors": errors,
        "non_ok": dict(failures),
        "non_ok_sample": sample,
        "ok": returncode == 0 and ok > 0 and errors == 0,
        **client,
        "h2load": {
            "requests": {"total": total, "started": started, "done": done},
            "succeeded": succeeded,
            "failed": failed,
            "errored": errored,
            "timeout": timeout,
            "status_codes": statuses,
            "data_bytes": data_bytes,
            "answer_bytes": answer_bytes,
            "logged_2xx": len(latencies),
        },
    }
    if not result["ok"]:
        result["failure"] = (
            f"h2load exit {returncode}"
            if returncode != 0
            else "no call completed"
            if done == 0
            else f"{errors} error(s): {dict(failures)}"
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
