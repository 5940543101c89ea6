"""This service side by side with the in-process limit, Flask and peer servers, one machine.

    make bench-setup     # once: wrk, and a virtual environment per peer (bench/setup_peers.sh)
    make bench-compare   # python -m bench.compare (all models, all servers, c = 1, 16, 64)
    python -m bench.compare --models digits --servers serve-app flask --duration 3 \\
        --concurrency 1 16                               # a quick smoke run

For each model: the in-process limit (``bench.inprocess``, in a child process), then each
server in turn, alone on the machine: start it, wait until a real request answers 200 with
the reference output, and for each of its HTTP endpoints and each concurrency C run wrk
closed loop with C connections (a warm-up run, then the measured run), counting the CPU of
the server's whole process tree. Servers with a gRPC endpoint (V2 ``ModelInfer`` for this
service and Triton, TF Serving ``Predict`` too for this service's digits) are then loaded
over gRPC too (``bench.grpc_load``: h2load by default, ``--grpc-load python`` for the
grpc.aio generator; at c = 1 and 64 by default), their answers checked the same way.
Then stop it (SIGINT, then SIGTERM/SIGKILL to what is left of its tree) and check its
ports are free. Writes ``compare.json``, ``compare.md`` and ``compare_<model>.png``
(``bench.report``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from bench import grpc_load, loadgen, machine, report
from bench.models import MODELS, REPO_ROOT
from bench.procs import ServerProcess, cpu_delta, port_in_use, top_processes
from bench.servers import PEERS, SERVERS
from bench.servers.base import Endpoint, GrpcEndpoint, Server

DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "compare.json"
LOGS = REPO_ROOT / "bench" / ".logs"
MAX_ABS_DIFF = 1e-4  # an answer further than this from the in-process output is wrong
SETTLE_CORES = 0.3  # after the first answer, wait until the server uses less CPU than this
SETTLE_MAX_S = 60.0
GRPC_READY_S = 60.0  # the gRPC port may open a little after HTTP answers


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- in-process ---------------------------------------------------------------------------


def in_process(model: str, batch_sizes: list[int], seconds: float) -> dict[str, Any]:
    """Run ``bench.inprocess`` in a child process (the frameworks leave with it)."""
    with tempfile.TemporaryDirectory(prefix="bench-inprocess-") as tmp:
        out = Path(tmp) / "result.json"
        argv = [sys.executable, "-m", "bench.inprocess", "--model", model, "--out", str(out)]
        argv += ["--seconds", str(seconds), "--batch-sizes", *map(str, batch_sizes)]
        proc = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"in-process {model} failed: {proc.stderr.strip()[-2000:]}")
        return json.loads(out.read_text())


# --- one request --------------------------------------------------------------------------


def call(url: str, body: str, timeout_s: float = 30.0) -> tuple[int, Any]:
    """POST ``body``; the status and the JSON answer (or its text when it is not JSON)."""
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")[:500]


def check_answer(
    server: Server, endpoint: Endpoint, reference: list[float], timeout_s: float = 30.0
) -> dict[str, Any]:
    """One request: is it a 200 whose output matches the in-process reference?"""
    status, answer = call(server.url(endpoint), endpoint.body_text(), timeout_s)
    result: dict[str, Any] = {"status": status}
    if status != 200:
        result.update(ok=False, error=f"HTTP {status}: {str(answer)[:300]}")
        return result
    try:
        row = endpoint.extract(answer)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        result.update(ok=False, error=f"unexpected answer ({exc!r}): {str(answer)[:300]}")
        return result
    return compare_row(result, row, reference)


def compare_row(result: dict[str, Any], row: list[float], reference: list[float]) -> dict[str, Any]:
    """``result`` with ``ok`` and the largest difference between ``row`` and the reference."""
    if len(row) != len(reference):
        result.update(ok=False, error=f"output has {len(row)} values, expected {len(reference)}")
        return result
    diff = max(abs(a - b) for a, b in zip(row, reference))
    result.update(ok=diff <= MAX_ABS_DIFF, max_abs_diff=diff, output_head=row[:4])
    if diff > MAX_ABS_DIFF:
        result["error"] = f"output differs from the in-process reference by {diff:.3g}"
    return result


def check_grpc_answer(
    server: Server, endpoint: GrpcEndpoint, reference: list[float], timeout_s: float = 30.0
) -> dict[str, Any]:
    """One gRPC call (retried while the port is not yet serving): is it OK, with an output
    that matches the in-process reference? The answer is decoded with tritonclient's or TF
    Serving's classes here, never in the load generator."""
    deadline = time.monotonic() + GRPC_READY_S
    with grpc.insecure_channel(server.grpc_target()) as channel:
        call = channel.unary_unary(
            endpoint.method, request_serializer=None, response_deserializer=None
        )
        while True:
            try:
                raw = call(endpoint.body(), timeout=timeout_s)
                break
            except grpc.RpcError as error:
                code = error.code()
                if code == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline:
                    time.sleep(1.0)
                    continue
                return {
                    "status": code.name,
                    "ok": False,
                    "error": f"{code.name}: {error.details()}",
                }
    # The answer's length lets h2load's run tell answers from gRPC errors (no message).
    result: dict[str, Any] = {"status": "OK", "answer_bytes": len(raw)}
    try:
        row = endpoint.extract(raw)
    except (DecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
        result.update(ok=False, error=f"unexpected answer ({exc!r}), {len(raw)} bytes")
        return result
    return compare_row(result, row, reference)


def wait_ready(
    server: Server, proc: ServerProcess, endpoint: Endpoint, reference: list[float]
) -> dict[str, Any]:
    """Poll the first endpoint until it answers correctly, the server dies, or time runs out."""
    started = time.monotonic()
    last: dict[str, Any] = {"error": "no answer yet"}
    while time.monotonic() - started < server.ready_timeout_s:
        if not proc.alive():
            return {"ok": False, "error": f"exited with {proc.popen.returncode} before ready"}
        try:
            last = check_answer(server, endpoint, reference, timeout_s=10.0)
            if last["ok"]:
                if server.fully_started():
                    return {"ok": True, "ready_s": round(time.monotonic() - started, 1)}
                last = {"error": "answers, but not every replica runs yet"}
                time.sleep(1.0)
                continue
            # A wrong 200 or a 500 is a broken server, not one still loading (those answer
            # 400/404/503 or refuse the connection): waiting will not fix it.
            if last["status"] in (200, 500):
                return {"ok": False, "error": last["error"]}
        except (OSError, urllib.error.URLError) as exc:
            last = {"error": f"{type(exc).__name__}: {exc}"}
        time.sleep(1.0)
    return {"ok": False, "error": f"not ready after {server.ready_timeout_s:.0f}s: {last}"}


# --- one server ---------------------------------------------------------------------------


def settle(proc: ServerProcess, max_s: float = SETTLE_MAX_S) -> dict[str, Any]:
    """Wait until the tree is quiet: one answer does not mean every worker has loaded its
    model (gunicorn's second worker, say). Quiet = under ``SETTLE_CORES`` for one second."""
    started = time.monotonic()
    cores = float("inf")
    while time.monotonic() - started < max_s:
        before, t0 = proc.cpu_snapshot(), time.monotonic()
        time.sleep(1.0)
        cores = cpu_delta(before, proc.cpu_snapshot()) / (time.monotonic() - t0)
        if cores < SETTLE_CORES:
            break
    return {"waited_s": round(time.monotonic() - started, 1), "last_cores_busy": round(cores, 3)}


def measure_idle(proc: ServerProcess, seconds: float) -> dict[str, Any]:
    """The tree's CPU with no request at all: its background cost (health checks, metrics,
    Ray's heartbeats), which the per-request CPU of a load run includes."""
    if seconds <= 0:
        return {}
    before, started = proc.cpu_snapshot(), time.monotonic()
    time.sleep(seconds)
    after, wall = proc.cpu_snapshot(), time.monotonic() - started
    return {
        "seconds": round(wall, 2),
        "cores_busy": round(cpu_delta(before, after) / wall, 3),
        "top_processes_cpu_s": top_processes(proc, before, after),
    }


Load = Callable[[int, float], dict[str, Any]]  # (concurrency, seconds) -> one run's result


def load_for(
    server: Server,
    endpoint: Endpoint | GrpcEndpoint,
    args: argparse.Namespace,
    answer_bytes: int | None = None,
) -> Load:
    """The closed-loop load of an endpoint: wrk for HTTP; for gRPC, ``--grpc-load``'s
    generator (h2load, told the checked answer's length, or grpc.aio)."""
    if isinstance(endpoint, GrpcEndpoint):
        call = grpc_load.Request(server.grpc_target(), endpoint.method, endpoint.body())
        if args.grpc_load == "h2load":
            return lambda c, seconds: grpc_load.run_h2load(
                call, c, seconds, args.grpc_channels, answer_bytes
            )
        return lambda c, seconds: grpc_load.run(call, c, seconds, args.grpc_channels)
    request = loadgen.Request(server.url(endpoint), endpoint.body_text())
    return lambda c, seconds: loadgen.run(request, c, seconds, args.wrk_threads)


def request_record(server: Server, endpoint: Endpoint | GrpcEndpoint) -> dict[str, Any]:
    """The exact request of an endpoint, as recorded in the results."""
    if isinstance(endpoint, GrpcEndpoint):
        call = grpc_load.Request(server.grpc_target(), endpoint.method, endpoint.body())
        return {**call.to_json(), "protocol": endpoint.protocol, "message": endpoint.describe()}
    request = loadgen.Request(server.url(endpoint), endpoint.body_text())
    return {"protocol": endpoint.protocol, **request.to_json()}


def measure_endpoint(
    server: Server,
    proc: ServerProcess,
    endpoint: Endpoint | GrpcEndpoint,
    args: argparse.Namespace,
    answer_bytes: int | None = None,
) -> list[dict[str, Any]]:
    """Warm-up + measured run at each concurrency (HTTP: ``--concurrency``, gRPC:
    ``--grpc-concurrency``), with the tree's CPU."""
    load = load_for(server, endpoint, args, answer_bytes)
    grpc_endpoint = isinstance(endpoint, GrpcEndpoint)
    points = []
    for connections in args.grpc_concurrency if grpc_endpoint else args.concurrency:
        warmup: dict[str, Any] = {}
        if args.warmup > 0:  # wrk runs whole seconds: at least 1
            warmup = load(connections, args.warmup)
        before, busy0, t0 = proc.cpu_snapshot(), machine.busy_cpu_seconds(), time.monotonic()
        run = load(connections, args.duration)
        after, busy1, wall = proc.cpu_snapshot(), machine.busy_cpu_seconds(), time.monotonic() - t0
        server_cpu = cpu_delta(before, after)
        point = {"concurrency": connections, **run, "server_cpu_s": round(server_cpu, 3)}
        point["warmup"] = {k: warmup.get(k) for k in ("ok", "requests", "rps", "failure")}
        if run.get("requests"):
            point["cpu_ms_per_request"] = 1000 * server_cpu / run["requests"]
        point["server_cores_busy"] = round(server_cpu / wall, 2)
        point["top_processes_cpu_s"] = top_processes(proc, before, after)
        # The load generator's own CPU (wrk's, or the gRPC generator's) is not other load.
        client_cpu = run.get("wrk_cpu_s", run.get("client_cpu_s", 0.0))
        other = (busy1 - busy0) - server_cpu - client_cpu
        point["other_cores_busy"] = round(max(0.0, other) / wall, 2)  # noise from other work
        points.append(point)
        log(
            f"  {endpoint.label} c={connections}: {run.get('rps', 0):.1f} req/s,"
            f" p50 {run.get('latency_ms', {}).get('p50', float('nan')):.2f} ms,"
            f" errors {run.get('errors', 'n/a')}"
            + ("" if run["ok"] else f" FAILED: {run.get('failure')}")
        )
    return points


def run_server(
    server: Server, model: str, reference: list[float], args: argparse.Namespace
) -> dict[str, Any]:
    """Start, check, measure and stop one server for one model."""
    result: dict[str, Any] = {"server": server.name, "settings": server.settings(model)}
    endpoints = server.endpoints(model)
    grpc_endpoints = server.grpc_endpoints(model) if args.grpc_concurrency else []
    result["requests"] = {e.label: request_record(server, e) for e in [*endpoints, *grpc_endpoints]}
    reason = server.unavailable()
    if model not in server.models:
        reason = f"serves {', '.join(server.models)} only"
    busy = [port for port in server.ports() if port_in_use(port)]
    if reason or busy:
        result.update(status="skipped", reason=reason or f"port(s) in use: {busy}")
        log(f"{server.name}: skipped: {result['reason']}")
        return result
    with tempfile.TemporaryDirectory(prefix=f"bench-{server.name}-") as tmp:
        argv = server.argv(model, Path(tmp))
        result["argv"] = argv
        log_path = LOGS / f"{server.name}-{model}.log"
        log(f"{server.name}: starting ({' '.join(Path(a).name for a in argv[:3])} ...)")
        proc = ServerProcess.start(server.name, argv, server.env(model), REPO_ROOT, log_path)
        try:
            ready = wait_ready(server, proc, endpoints[0], reference)
            result["ready"] = ready
            if not ready["ok"]:
                result.update(status="failed", reason=ready["error"], log_tail=_tail(log_path))
                log(f"{server.name}: FAILED to start: {ready['error']}")
                return result
            log(f"{server.name}: ready in {ready['ready_s']}s")
            result["settle"] = settle(proc)
            result["processes"] = proc.describe()
            result["idle"] = measure_idle(proc, args.idle)
            result["endpoints"] = {}
            for endpoint in [*endpoints, *grpc_endpoints]:
                if isinstance(endpoint, GrpcEndpoint):
                    check = check_grpc_answer(server, endpoint, reference)
                else:
                    check = check_answer(server, endpoint, reference)
                entry: dict[str, Any] = {"protocol": endpoint.protocol, "check": check}
                if check["ok"]:
                    answer_bytes = check.get("answer_bytes")
                    entry["points"] = measure_endpoint(server, proc, endpoint, args, answer_bytes)
                else:
                    log(f"  {endpoint.label}: wrong answer: {check.get('error')}")
                result["endpoints"][endpoint.label] = entry
            result["status"] = "ok"
        finally:
            result["stop"] = proc.stop(server.stop_grace_s, group=server.stop_group)
            result["stop"]["ports_busy_after"] = _wait_ports_free(server.ports())
            log(f"{server.name}: stopped {result['stop']}")
    return result


def _wait_ports_free(ports: list[int], timeout_s: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    busy = ports
    while busy and time.monotonic() < deadline:
        time.sleep(0.5)
        busy = [port for port in ports if port_in_use(port)]
    return busy


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- ratios -------------------------------------------------------------------------------


def add_ratios(model_result: dict[str, Any]) -> None:
    """Each point's throughput / the limit and / the best peer (same model and C); c=1 p50
    minus the in-process one-row p50. The peers are the PyPI servers: not this service, and
    not the Flask baseline."""
    limit = model_result["in_process"]
    rows = [
        (server["server"], label, point)
        for server in model_result["servers"]
        for label, entry in server.get("endpoints", {}).items()
        for point in entry.get("points", [])
        if point.get("ok")
    ]
    for _, _, point in rows:
        point["vs_limit"] = point["rps"] / limit["best_items_per_s"]
        peers = [
            p["rps"] for n, _, p in rows if n in PEERS and p["concurrency"] == point["concurrency"]
        ]
        point["vs_best_peer"] = point["rps"] / max(peers) if peers else None
        if point["concurrency"] == 1 and limit.get("batch1_p50_ms") is not None:
            point["p50_minus_inprocess_ms"] = point["latency_ms"]["p50"] - limit["batch1_p50_ms"]


# A model measured against another model's servers in the same run: ONNX MiniLM against the
# peers serving the torch MiniLM; the Python-wrapped digits against the built-in digits.
AGAINST = {"minilm-onnx": ("minilm", "vs_torch_peer"), "digits-python": ("digits", "vs_builtin")}


def add_cross_ratios(results: dict[str, Any]) -> None:
    """For ``AGAINST``'s models, each of our points / the other model's best peer (ONNX) or our
    own point on the same endpoint kind (Python digits), at the same concurrency; and the
    server CPU per request over it."""
    for model, (other, key) in AGAINST.items():
        if model not in results["models"] or other not in results["models"]:
            continue
        theirs = [
            (server["server"], entry["protocol"], point)
            for server in results["models"][other]["servers"]
            for entry in server.get("endpoints", {}).values()
            for point in entry.get("points", [])
            if point.get("ok")
        ]
        for server in results["models"][model]["servers"]:
            for entry in server.get("endpoints", {}).values():
                for point in entry.get("points", []):
                    if not point.get("ok"):
                        continue
                    same_c = [
                        (n, pr, p)
                        for n, pr, p in theirs
                        if p["concurrency"] == point["concurrency"]
                    ]
                    if key == "vs_torch_peer":
                        peers = [p for n, _, p in same_c if n in PEERS]
                    else:
                        peers = [
                            p
                            for n, pr, p in same_c
                            if n == server["server"] and pr == entry["protocol"]
                        ]
                    if not peers:
                        continue
                    best = max(peers, key=lambda p: p["rps"])
                    point[key] = point["rps"] / best["rps"]
                    if "cpu_ms_per_request" in point and "cpu_ms_per_request" in best:
                        point[f"cpu_ms_per_request_over_{other}"] = (
                            point["cpu_ms_per_request"] - best["cpu_ms_per_request"]
                        )


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare",
        description="This service vs the in-process limit, Flask and peers (see bench/README.md).",
    )
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--servers", nargs="+", choices=list(SERVERS), default=list(SERVERS))
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 16, 64])
    parser.add_argument(
        "--grpc-concurrency",
        nargs="*",
        type=int,
        default=[1, 64],
        help="gRPC points (this service and Triton); none: no gRPC points",
    )
    parser.add_argument("--grpc-channels", type=int, default=1, help="HTTP/2 connections")
    parser.add_argument(
        "--grpc-load",
        choices=grpc_load.GENERATORS,
        help="gRPC load generator (default: h2load, or python where h2load is missing)",
    )
    parser.add_argument("--duration", type=float, default=15.0, help="measured s per point")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up s before each point")
    parser.add_argument("--idle", type=float, default=3.0, help="s of idle CPU measured per server")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk -t (at most 2)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 16, 32, 64])
    parser.add_argument("--inprocess-seconds", type=float, default=3.0, help="per batch size")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON; .md/.png beside")
    args = parser.parse_args(argv)
    if not 1 <= args.wrk_threads <= 2:
        parser.error("--wrk-threads must be 1 or 2")
    if min(args.concurrency + args.grpc_concurrency) < 1 or args.duration <= 0:
        parser.error("--concurrency must be >= 1 and --duration > 0")
    if args.grpc_channels < 1:
        parser.error("--grpc-channels must be >= 1")
    if args.grpc_load is None:
        args.grpc_load = "h2load"
        if grpc_load.h2load_path() is None:
            args.grpc_load = "python"
            log("h2load is not installed (make bench-setup): gRPC points use --grpc-load python")
    elif args.grpc_load == "h2load" and grpc_load.h2load_path() is None:
        parser.error("--grpc-load h2load: h2load is missing (apt-get install nghttp2-client)")
    if args.grpc_load == "h2load":
        try:
            for c in args.grpc_concurrency:
                grpc_load.streams_per_connection(c, args.grpc_channels)
        except ValueError as exc:
            parser.error(str(exc))
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; exit 1 when a server failed or a run had errors."""
    args = parse_args(argv)
    # Ctrl+C and SIGTERM unwind through run_server's finally, which stops the running server.
    # Installing a handler also undoes an inherited SIG_IGN (a shell's background job), which
    # the servers would otherwise inherit and so ignore the SIGINT that stops them.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    results: dict[str, Any] = {
        "command": "python -m bench.compare " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "concurrency": args.concurrency,
            "grpc_concurrency": args.grpc_concurrency,
            "grpc_channels": args.grpc_channels,
            "grpc_load": grpc_load.describe(args.grpc_load),
            "grpc_generator": args.grpc_load,
            "wrk_threads": args.wrk_threads,
            "wrk": loadgen.wrk_version(),
            "wrk_timeout_s": loadgen.WRK_TIMEOUT_S,
            "batch_sizes": args.batch_sizes,
            "max_abs_diff": MAX_ABS_DIFF,
        },
        "machine": machine.describe(),
        "versions": {},
        "models": {},
    }
    for name in args.servers:
        results["versions"][name] = SERVERS[name].versions()
    for model in args.models:
        log(f"{model}: in-process limit")
        limit = in_process(model, args.batch_sizes, args.inprocess_seconds)
        log(
            f"{model}: limit {limit['best_items_per_s']:.1f} items/s at batch"
            f" {limit['best_batch_size']}, batch-1 p50 {limit['batch1_p50_ms']:.2f} ms"
        )
        model_result: dict[str, Any] = {"in_process": limit, "servers": []}
        for name in args.servers:
            server_result = run_server(SERVERS[name], model, limit["reference_output"], args)
            model_result["servers"].append(server_result)
        add_ratios(model_result)
        results["models"][model] = model_result
    add_cross_ratios(results)
    results["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    written = report.write(results, args.out)
    log("wrote " + ", ".join(str(p) for p in [args.out, *written]))
    return 0 if report.all_ok(results) else 1


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt as interrupt:
        log(f"interrupted ({interrupt}); the running server was stopped, nothing written")
        raise SystemExit(130) from None
