"""The container's entry point: serve the fleet on ``$PORT`` (Docker, Cloud Run).

    python -m serve_app.container

- ``PORT`` (default 8000): the HTTP port (Cloud Run sets it). ``GRPC_PORT`` (default the
  config's, 9000): gRPC, where the platform can reach it (Cloud Run exposes one port).
- ``SERVE_APP_CONFIG`` (default ``serve_config.yaml``, the default fleet, whose models are
  built into the image under ``model_repository/``): another Serve config, e.g. one whose
  ``uri``s are ``gs://`` (downloaded into ``SERVE_APP_CACHE_DIR``, on the container's disk).
- The fast request path (``serve_app/fast_path.py``) is on where HAProxy is (the image's);
  gRPC messages are capped (``RAY_SERVE_GRPC_MAX_MESSAGE_SIZE``) as ``make run`` caps them.

It writes the config with those ports beside the original (relative model paths still
resolve), starts ``serve run`` on it in a process group of its own, and on SIGTERM or SIGINT
(Cloud Run and ``docker stop`` send SIGTERM) asks ``serve run`` to shut Serve and its Ray
down (SIGINT), then exits with its status.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from serve_app.fast_path import NO_HAPROXY, fast_path_env, serve_env

DEFAULT_CONFIG = "serve_config.yaml"
# Ray and the libraries, as `make run` sets them: nothing fetched from a hub, no usage report.
QUIET_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def container_config(source: Path, port: int, grpc_port: int | None) -> Path:
    """``source`` with HTTP on 0.0.0.0:``port`` (and gRPC on ``grpc_port``), written beside it."""
    config = yaml.safe_load(source.read_text())
    config.setdefault("http_options", {}).update(host="0.0.0.0", port=port)
    if grpc_port is not None and config.get("grpc_options"):
        config["grpc_options"]["port"] = grpc_port
    target = source.with_name(f".{source.stem}.container.yaml")
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def environment(environ: dict[str, str]) -> dict[str, str]:
    """The environment of ``serve run``: quiet libraries, the caller's, the transports' caps
    and the fast path (as ``make run``)."""
    if not fast_path_env(environ):
        print(NO_HAPROXY, file=sys.stderr, flush=True)
    return {**QUIET_ENV, **environ, **serve_env(environ)}


def main() -> int:
    port = int(os.environ.get("PORT") or 8000)
    grpc = os.environ.get("GRPC_PORT")
    source = Path(os.environ.get("SERVE_APP_CONFIG") or DEFAULT_CONFIG)
    config = container_config(source, port, int(grpc) if grpc else None)
    serve = Path(sys.executable).parent / "serve"
    print(f"serve-app: serving {source} on port {port}", flush=True)
    process = subprocess.Popen(
        [str(serve) if serve.exists() else "serve", "run", str(config)],
        env=environment(dict(os.environ)),
        start_new_session=True,
    )

    def stop(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(process.pid, signal.SIGINT)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return process.wait()


if __name__ == "__main__":
    sys.exit(main())
