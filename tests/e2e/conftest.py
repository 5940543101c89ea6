"""One `serve run serve_config.yaml` for the e2e tests, started as `make run` starts it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from serve_app.examples import build_model_repository
from serve_app.fast_path import FAST_PATH_ENV, TRANSPORT_ENV
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
BASE_URL = "http://127.0.0.1:8000"
GRPC_PORT = 9000  # serve_config.yaml's grpc_options


@pytest.fixture(scope="package")  # stopped before the integration tests start theirs
def served_fleet() -> Iterator[None]:
    """The default fleet with the fast-path environment, on port 8000; stopped after the
    e2e tests."""
    try:
        requests.get(BASE_URL, timeout=1)
        pytest.fail("port 8000 is already in use; stop the other server first")
    except requests.ConnectionError:
        pass
    with socket.socket() as probe:  # the docs' gRPC calls (README.md, docs/) must reach it too
        if probe.connect_ex(("127.0.0.1", GRPC_PORT)) == 0:
            pytest.fail(f"port {GRPC_PORT} (gRPC) is already in use; stop the other server first")
    build_model_repository(ROOT / "model_repository")
    serve = Path(sys.executable).parent / "serve"
    process = subprocess.Popen(
        [str(serve), "run", "serve_config.yaml"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, **TRANSPORT_ENV, **FAST_PATH_ENV, "HF_HUB_OFFLINE": "1"},  # as make run
    )
    try:
        for model in ("digits", "minilm", "tiny-gpt2"):
            wait_for(
                lambda m=model: requests.get(f"{BASE_URL}/v1/models/{m}", timeout=5).ok,
                300,
                f"`serve run serve_config.yaml` to serve {model}",
            )
        yield
    finally:
        os.killpg(process.pid, signal.SIGINT)  # `serve run` shuts Serve and its Ray down
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
