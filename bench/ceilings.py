"""The ceilings of the serving path: what Ray Serve answers when the app itself does nothing.

    python -m bench.ceilings                      # all parts, 10 s per wrk point
    python -m bench.ceilings --parts roundtrip    # only the handle round trips

Each part runs ``serve run`` of a generated config on port 8010 with the fast-path
environment (``serve_app/fast_path.py``), as ``make run`` serves the fleet:

- ``fastapi`` / ``asgi``: a no-op ingress (``bench/ceiling_apps.py``) behind HAProxy,
  loaded by wrk at each concurrency; its idle CPU too. Nothing the service does per request
  can be cheaper than these.
- ``roundtrip``: handle calls from an ingress replica to a no-op model deployment, 1 and 32
  digits-shaped rows per call, one call at a time and several in flight: the per-call cost
  that coalescing amortises.

Writes ``bench/results/ceilings.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from bench import loadgen, machine
from bench.compare import log, measure_idle, settle
from bench.models import REPO_ROOT
from bench.procs import ServerProcess, cpu_delta, top_processes
from bench.servers.ours import RAY_TMPDIR
from serve_app.fast_path import FAST_PATH_ENV

PORT = 8010
URL = f"http://127.0.0.1:{PORT}"
IMPORT_PATHS = {
    "fastapi": "bench.ceiling_apps:fastapi_noop",
    "asgi": "bench.ceiling_apps:asgi_noop",
    "roundtrip": "bench.ceiling_apps:roundtrip",
}
BODY = json.dumps({"instances": [[0.5] * 64]}, separators=(",", ":"))
# (rows per call, calls in flight) for the handle round trips.
ACCESS_LOG = True  # --no-access-log: Serve's per-request access log off
ROUNDTRIPS = [(1, 1), (32, 1), (1, 8), (32, 2), (32, 8)]


def config(part: str, access_log: bool = True) -> dict[str, Any]:
    """A Serve config with one application, the part's."""
    app: dict[str, Any] = {"name": part, "route_prefix": "/", "import_path": IMPORT_PATHS[part]}
    if not access_log:
        app["logging_config"] = {"enable_access_log": False}
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": PORT},
        "applications": [app],
    }


def start(part: str, tmp: Path) -> ServerProcess:
    """``serve run`` of the part's config; returns once it answers."""
    path = tmp / f"{part}.yaml"
    path.write_text(yaml.safe_dump(config(part, ACCESS_LOG)))
    env = {**_base_env(), "RAY_TMPDIR": RAY_TMPDIR, **FAST_PATH_ENV}
    argv = [str(REPO_ROOT / ".venv" / "bin" / "serve"), "run", str(path)]
    proc = ServerProcess.start(
        part, argv, env, REPO_ROOT, REPO_ROOT / "bench" / ".logs" / f"ceiling-{part}.log"
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if not proc.alive():
            proc.stop(30)
            raise RuntimeError(f"{part}: serve run exited; see {proc.log_path}")
        try:
            method = "GET" if part == "roundtrip" else "POST"
            query = "?per_call=1&calls=1" if part == "roundtrip" else ""
            data = None if method == "GET" else BODY.encode()
            with urllib.request.urlopen(
                urllib.request.Request(URL + "/" + query, data=data, method=method), timeout=30
            ) as answer:
                if answer.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(1)
    proc.stop(30)
    raise RuntimeError(f"{part}: not ready after 180 s")


def _base_env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def noop_part(part: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Idle CPU, then wrk at each concurrency against the no-op ingress."""
    proc = start(part, tmp)
    try:
        result: dict[str, Any] = {"settle": settle(proc), "idle": measure_idle(proc, args.idle)}
        request = loadgen.Request(URL + "/v1/models/noop:predict", BODY)
        points = []
        for connections in args.concurrency:
            loadgen.run(request, connections, 2)
            before, t0 = proc.cpu_snapshot(), time.monotonic()
            run = loadgen.run(request, connections, args.duration)
            after, wall = proc.cpu_snapshot(), time.monotonic() - t0
            server_cpu = cpu_delta(before, after)
            point = {
                "concurrency": connections,
                "rps": round(run.get("rps", 0.0), 1),
                "latency_ms": run.get("latency_ms"),
                "errors": run.get("errors"),
                "server_cpu_ms_per_request": round(
                    1000 * server_cpu / max(1, run.get("requests", 0)), 3
                ),
                "wrk_cpu_ms_per_request": round(
                    1000 * run["wrk_cpu_s"] / max(1, run.get("requests", 0)), 3
                ),
                "server_cores_busy": round(server_cpu / wall, 2),
                "top_processes_cpu_s": top_processes(proc, before, after),
            }
            points.append(point)
            p50 = (run.get("latency_ms") or {}).get("p50")
            cpu = point["server_cpu_ms_per_request"]
            log(f"{part} c={connections}: {point['rps']} req/s, p50 {p50} ms, {cpu} ms CPU/req")
        result["points"] = points
        return result
    finally:
        proc.stop(30)


def roundtrip_part(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Handle calls from the ingress replica to a no-op deployment."""
    proc = start("roundtrip", tmp)
    try:
        settle(proc)
        results = []
        for per_call, concurrency in ROUNDTRIPS:
            calls = max(200, int(args.calls / max(1, per_call // 8)))
            query = f"?per_call={per_call}&calls={calls}&concurrency={concurrency}"
            with urllib.request.urlopen(URL + "/" + query, timeout=600) as answer:
                result = json.loads(answer.read())
            results.append(result)
            log(f"roundtrip {result}")
        return {"points": results}
    finally:
        proc.stop(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["asgi", "fastapi", "roundtrip"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "bench" / "results" / "ceilings.json"
    )
    parser.add_argument("--no-access-log", action="store_true")
    args = parser.parse_args(argv)
    global ACCESS_LOG
    ACCESS_LOG = not args.no_access_log
    out: dict[str, Any] = {
        "command": "python -m bench.ceilings " + " ".join(argv or sys.argv[1:]),
        "machine": machine.describe(),
        "parts": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-ceilings-") as tmp:
        for part in args.parts:
            log(f"{part}: starting")
            if part == "roundtrip":
                out["parts"][part] = roundtrip_part(args, Path(tmp))
            else:
                out["parts"][part] = noop_part(part, args, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
