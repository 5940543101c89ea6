"""The per-request CPU floor of the two transports, with no model and no Ray.

    python -m bench.grpc_floor                          # C = 64, 6 s each
    python -m bench.grpc_floor --duration 4 --out bench/results/grpc_floor.json

Starts two echo servers as child processes on free loopback ports, one after the other:

- ``grpc``: a ``grpc.aio`` server on uvloop with one generic unary method
  (``/bench.Echo/Echo``) that answers the request's bytes, loaded by h2load
  (``bench.grpc_load.run_h2load``);
- ``http``: uvicorn (httptools, uvloop) with a raw ASGI app that answers the POST body,
  loaded by wrk (``bench.loadgen.run``).

Both get the same body (the digits V2 JSON request of ``bench.compare``) at the same
concurrency and duration, closed loop, after a short warm-up. The server's CPU is utime +
stime from ``/proc/<pid>/stat`` before and after the measured run: its CPU per request is
what that transport's server stack costs at the least, before any model or routing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import grpc_load, loadgen, machine
from bench.models import REPO_ROOT
from bench.servers.base import v2_body

ECHO_METHOD = "/bench.Echo/Echo"
READY_S = 30.0
TRANSPORTS = ("grpc", "http")
BODY = json.dumps(v2_body("digits"), separators=(",", ":"))


# --- the servers (run in the child processes) -------------------------------------------------


async def _grpc_echo(request: bytes, context: Any) -> bytes:
    return request


def serve_grpc(port: int) -> None:
    """A grpc.aio server on uvloop: ``/bench.Echo/Echo`` answers the request's bytes."""
    import grpc
    import uvloop

    async def main() -> None:
        server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(_grpc_echo)  # bytes in, bytes out
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler}),)
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    uvloop.run(main())


async def echo_asgi(scope: dict[str, Any], receive: Callable, send: Callable) -> None:
    """A raw ASGI app: every POST is answered 200 with its own body."""
    if scope["type"] != "http":
        return
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def serve_http(port: int) -> None:
    """uvicorn with httptools and uvloop, one process, no access log."""
    import uvicorn

    uvicorn.run(
        echo_asgi,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )


# --- the measurement --------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port nothing listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process from ``/proc/<pid>/stat`` (all its threads), in s."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(transport: str, port: int) -> subprocess.Popen[bytes]:
    """The echo server of ``transport`` in a child process."""
    argv = [sys.executable, "-m", "bench.grpc_floor", "--serve", transport, "--port", str(port)]
    return subprocess.Popen(
        argv, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )


def answers(transport: str, port: int) -> bool:
    """Whether the server echoes one request now."""
    try:
        if transport == "grpc":
            import grpc

            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                echo = channel.unary_unary(ECHO_METHOD)
                return echo(BODY.encode(), timeout=2) == BODY.encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=BODY.encode())
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.read() == BODY.encode()
    except Exception:  # not up yet, whatever the client library raises
        return False


def wait_ready(transport: str, port: int, proc: subprocess.Popen[bytes]) -> None:
    """Return once the server echoes; raise if it exits or takes too long."""
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{transport} echo server exited with {proc.returncode}")
        if answers(transport, port):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{transport} echo server not answering after {READY_S:.0f} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL, to this one child, by pid."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


def load(transport: str, port: int, concurrency: int, seconds: float) -> dict[str, Any]:
    """One closed-loop run: h2load for gRPC, wrk for HTTP."""
    if transport == "grpc":
        request = grpc_load.Request(f"127.0.0.1:{port}", ECHO_METHOD, BODY.encode())
        return grpc_load.run_h2load(request, concurrency, seconds, answer_bytes=len(BODY))
    return loadgen.run(loadgen.Request(f"http://127.0.0.1:{port}/", BODY), concurrency, seconds)


def measure(transport: str, concurrency: int, seconds: float, warmup: float) -> dict[str, Any]:
    """Start the echo server, warm it up, measure one run with its CPU, stop it."""
    port = free_port()
    proc = start(transport, port)
    try:
        wait_ready(transport, port, proc)
        if warmup > 0:
            load(transport, port, concurrency, warmup)
        before, busy0, t0 = cpu_seconds(proc.pid), machine.busy_cpu_seconds(), time.monotonic()
        run = load(transport, port, concurrency, seconds)
        server_cpu = cpu_seconds(proc.pid) - before
        busy, wall = machine.busy_cpu_seconds() - busy0, time.monotonic() - t0
    finally:
        stop(proc)
    requests = run.get("requests") or 0
    client_cpu = run.get("client_cpu_s", run.get("wrk_cpu_s", 0.0))
    # The machine is shared: the CPU neither the server nor the generator used is noise.
    other_cores = max(0.0, busy - server_cpu - client_cpu) / wall
    return {
        "transport": transport,
        "server": "grpc.aio on uvloop" if transport == "grpc" else "uvicorn (httptools, uvloop)",
        "generator": "h2load" if transport == "grpc" else "wrk",
        "ok": run.get("ok", False),
        "rps": run.get("rps", 0.0),
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_ms_per_request": round(1000 * server_cpu / requests, 4) if requests else None,
        "server_cores_busy": round(server_cpu / run["duration_s"], 2) if requests else None,
        "client_cpu_s": client_cpu,
        "other_cores_busy": round(other_cores, 2),
        "run": run,
    }


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Measure both echo servers; print and (``--out``) write the result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=6.0, help="measured s per transport")
    parser.add_argument("--warmup", type=float, default=1.0, help="s of load before each")
    parser.add_argument("--out", type=Path, help="write the result here (JSON)")
    parser.add_argument("--serve", choices=TRANSPORTS, help=argparse.SUPPRESS)  # a child
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        (serve_grpc if args.serve == "grpc" else serve_http)(args.port)
        return 0
    # SIGTERM unwinds through measure's finally, which stops the running echo server.
    signal.signal(signal.SIGTERM, _interrupt)
    if grpc_load.h2load_path() is None:
        parser.error("h2load is missing: run `make bench-setup` (apt-get install nghttp2-client)")
    result: dict[str, Any] = {
        "command": "python -m bench.grpc_floor " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "body_bytes": len(BODY),
            "grpc_method": ECHO_METHOD,
            "h2load": grpc_load.h2load_version(),
            "wrk": loadgen.wrk_version(),
        },
        "machine": machine.describe(),
        "transports": {},
    }
    for transport in TRANSPORTS:
        point = measure(transport, args.concurrency, args.duration, args.warmup)
        result["transports"][transport] = point
        print(
            f"{transport:4} ({point['server']}, {point['generator']}, c={args.concurrency}):"
            f" {point['rps']:,.0f} req/s, server CPU {point['server_cpu_ms_per_request']} ms"
            f"/request ({point['server_cores_busy']} cores; other load"
            f" {point['other_cores_busy']} cores)"
            + ("" if point["ok"] else f" FAILED: {point['run'].get('failure')}"),
            flush=True,
        )
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0 if all(p["ok"] for p in result["transports"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
