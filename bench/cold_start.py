"""Cold start from zero replicas: how long the first request to a model scaled to zero waits.

    python -m bench.cold_start                 # digits and minilm, 3 cold starts each

Serves the default fleet's ingress with two models copied from ``serve_config.yaml``
(``digits`` as ``cold-digits``, ``minilm`` as ``cold-minilm``, same args and runtime_env)
that scale to zero after 1 s idle (``autoscaling: {min_replicas: 0, max_replicas: 1,
downscale_to_zero_delay_s: 1}``), with ``serve run`` and the fast-path environment on port
8010. For each round it waits until the ingress sees the model at zero replicas
(``GET /fleet``, for longer than that view may be old), then times one request (V2 infer;
deadline 180 s): the replica's start, its imports and model load, and the answer. Writes
``bench/results/cold_start.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
import yaml

from bench import machine
from bench.compare import log
from bench.models import REPO_ROOT
from bench.procs import ServerProcess
from bench.servers.ours import RAY_TMPDIR
from serve_app.examples import build_model_repository, digits_sample
from serve_app.fast_path import FAST_PATH_ENV

PORT = 8010
URL = f"http://127.0.0.1:{PORT}"
MODELS = {"digits": "cold-digits", "minilm": "cold-minilm"}
FLEET_VIEW_S = 6.0  # longer than the ingress's view of Serve may be old (/fleet, 5 s)
AUTOSCALING = {
    "min_replicas": 0,
    "max_replicas": 1,
    "initial_replicas": 1,
    "downscale_delay_s": 1,
    "downscale_to_zero_delay_s": 1,
}
BODIES = {
    "digits": {
        "inputs": [
            {"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": digits_sample(1)[0]}
        ]
    },
    "minilm": {
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a cold start"]}]
    },
}


def config() -> dict[str, Any]:
    """The ingress and the two scale-to-zero copies, as ``serve_config.yaml`` writes them."""
    fleet = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    apps = {app["name"]: app for app in fleet["applications"]}
    chosen = [apps["ingress"]]
    for source, name in MODELS.items():
        app = copy.deepcopy(apps[source])
        app["name"] = name
        app["args"]["name"] = name
        app["args"].pop("num_replicas", None)
        app["args"]["autoscaling"] = dict(AUTOSCALING)
        chosen.append(app)
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": PORT},
        "applications": chosen,
    }


def running_replicas(name: str) -> int | None:
    """Running replicas of ``name`` as the ingress sees them (``None`` until it knows)."""
    fleet = requests.get(f"{URL}/fleet", timeout=30).json()
    for model in fleet.get("models", []):
        if model["name"] == name:
            return model["running_replicas"]
    return None


def at_zero(name: str) -> None:
    """Return once ``name`` has been at zero replicas for a while.

    The ingress reads Serve's view at most every 5 s (``/fleet``): zero counts once every
    reading for ``FLEET_VIEW_S`` (longer than that) has said so, starting after the downscale
    delay has passed since the last request.
    """
    time.sleep(AUTOSCALING["downscale_to_zero_delay_s"] + FLEET_VIEW_S)
    deadline = time.monotonic() + 300
    since: float | None = None
    while time.monotonic() < deadline:
        if running_replicas(name) == 0:
            since = since or time.monotonic()
            if time.monotonic() - since >= FLEET_VIEW_S:
                return
        else:
            since = None
        time.sleep(0.5)
    raise RuntimeError(f"timed out waiting for {name} to scale to zero")


def wait(what: str, check: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"timed out waiting for {what}")


def infer(source: str, name: str) -> requests.Response:
    return requests.post(
        f"{URL}/v2/models/{name}/infer",
        json=BODIES[source],
        headers={"X-Request-Timeout-Seconds": "180"},
        timeout=200,
    )


def measure(rounds: int) -> dict[str, Any]:
    """Each model's cold starts, in seconds, with the warm latency for comparison."""
    results: dict[str, Any] = {}
    for source, name in MODELS.items():
        wait(f"{name} to answer", lambda s=source, n=name: infer(s, n).ok, 300)
        warm = []
        for _ in range(5):
            started = time.monotonic()
            assert infer(source, name).ok
            warm.append(time.monotonic() - started)
        cold = []
        for round_ in range(rounds):
            at_zero(name)
            started = time.monotonic()
            answer = infer(source, name)
            cold.append(time.monotonic() - started)
            if not answer.ok:
                raise RuntimeError(f"{name}: cold request answered {answer.status_code}")
            log(f"{name}: cold start {round_ + 1}/{rounds}: {cold[-1]:.2f} s")
        results[name] = {
            "copied_from": source,
            "cold_s": [round(c, 2) for c in cold],
            "cold_median_s": round(statistics.median(cold), 2),
            "warm_median_ms": round(statistics.median(warm) * 1000, 1),
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "bench" / "results" / "cold_start.json"
    )
    args = parser.parse_args(argv)
    build_model_repository(REPO_ROOT / "model_repository")
    out: dict[str, Any] = {
        "command": "python -m bench.cold_start " + " ".join(argv or sys.argv[1:]),
        "machine": machine.describe(),
        "autoscaling": AUTOSCALING,
    }
    with tempfile.TemporaryDirectory(prefix="bench-cold-start-") as tmp:
        path = Path(tmp) / "cold.yaml"
        path.write_text(yaml.safe_dump(config(), sort_keys=False))
        env = {**os.environ, "RAY_TMPDIR": RAY_TMPDIR, "HF_HUB_OFFLINE": "1", **FAST_PATH_ENV}
        env.pop("RAY_ADDRESS", None)
        argv_ = [str(REPO_ROOT / ".venv" / "bin" / "serve"), "run", str(path)]
        log_path = REPO_ROOT / "bench" / ".logs" / "cold-start.log"
        server = ServerProcess.start("cold-start", argv_, env, REPO_ROOT, log_path)
        try:
            out["models"] = measure(args.rounds)
        finally:
            out["stopped"] = server.stop(60, group=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    log(f"wrote {args.out}: " + json.dumps(out["models"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
