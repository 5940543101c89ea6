"""The container's entry point as a process (no container runtime here): with ``PORT`` set it
serves the default fleet there, fast path on, and SIGTERM (what Cloud Run and ``docker stop``
send) shuts it down. Prints the time from start to the first answered request."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from serve_app.examples import build_model_repository
from tests.helpers import free_port, wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SEVEN = [0.0, 0.0, 0.125, 0.8125, 1.0, 0.5625, 0.0, 0.0] + [0.5] * 56


def test_the_entry_point_serves_the_fleet_on_port_and_stops_on_sigterm(tmp_path) -> None:
    build_model_repository(ROOT / "model_repository")
    port, grpc_port = free_port(), free_port()
    # A Ray of its own, as in a container: without its own temp dir, `serve run` would join
    # the test session's running Ray (found through the temp dir) and never serve on PORT.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PORT=str(port), GRPC_PORT=str(grpc_port), RAY_TMPDIR=f"/tmp/ray-ct-{port}")
    # HAProxy's stats and metrics listen on fixed ports (8404, 9101): another fast-path
    # server on this machine (a developer's `make run`) holds them, and HAProxy would not start.
    env.update(
        RAY_SERVE_HAPROXY_STATS_PORT=str(free_port()),
        RAY_SERVE_HAPROXY_METRICS_PORT=str(free_port()),
    )
    env["SERVE_APP_CACHE_DIR"] = str(tmp_path / "cache")
    log = (tmp_path / "entrypoint.log").open("w")
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "serve_app.container"], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def answered() -> requests.Response | None:
            response = requests.post(
                f"{url}/v1/models/digits:predict", json={"instances": [SEVEN]}, timeout=10
            )
            return response if response.status_code == 200 else None

        try:
            response = wait_for(answered, 600, f"the entry point to answer on port {port}")
        except AssertionError:
            log.flush()
            print((tmp_path / "entrypoint.log").read_text()[-6000:])  # why it never answered
            raise
        print(f"start to first answer: {time.monotonic() - started:.1f} s")
        assert len(response.json()["predictions"][0]) == 10
        for model in ("minilm", "tiny-gpt2"):
            wait_for(
                lambda m=model: requests.get(f"{url}/v1/models/{m}", timeout=10).ok, 300, model
            )
        # The startup probe's path (cloudrun/service.yaml): ready once every model reports.
        ready = lambda: requests.get(f"{url}/v2/health/ready", timeout=10).status_code == 200  # noqa: E731
        wait_for(ready, 180, "/v2/health/ready to answer 200")
        print(f"start to ready: {time.monotonic() - started:.1f} s")
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)  # by pid: the entry point stops `serve run`
        try:
            code = process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        finally:
            log.close()
    text = (tmp_path / "entrypoint.log").read_text()
    assert code == 0, text[-3000:]
    assert f"on port {port}" in text
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/v2/health/live", timeout=5)
