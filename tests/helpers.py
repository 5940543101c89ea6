"""Shared test helpers: free ports, polling, concurrent HTTP calls."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

# Test data written by other projects, copied into the repository (each folder's README.md
# names its source and licence).
TESTDATA = Path(__file__).resolve().parent / "data"
TFSERVING_TESTDATA = TESTDATA / "tfserving"
KUBERAY_CRDS = TESTDATA / "kuberay"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.5):
    """Poll until ``predicate`` returns a truthy value; fail the test with ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # keep polling; report the last error on timeout
            last_error = exc
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last_error!r})")


def post_many(url: str, bodies: list[Any], concurrency: int) -> list[requests.Response]:
    """POST each body from ``concurrency`` threads at once; responses in body order."""
    with ThreadPoolExecutor(concurrency) as pool, requests.Session() as session:
        return list(pool.map(lambda body: session.post(url, json=body, timeout=120), bodies))
