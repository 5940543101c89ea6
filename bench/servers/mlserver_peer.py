"""MLServer with adaptive batching (``max_batch_size`` 32, ``max_batch_time`` 5 ms)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.servers.base import (
    BATCH_WAIT_S,
    MAX_BATCH_SIZE,
    VENVS,
    Endpoint,
    Server,
    v2_body,
    v2_extract,
)

RUNTIME = "bench.servers.apps.mlserver_runtime.BenchRuntime"


class MLServer(Server):
    """``mlserver start`` of a generated model repository (settings.json + model-settings)."""

    name = "mlserver"
    port = 8104
    venv = VENVS / "mlserver"
    packages = ("mlserver", "uvloop", "fastapi", "tensorflow-cpu", "torch", "transformers")
    configured_as = (
        "mlserver start: one HTTP process + parallel_workers 1 (MLServer's default: one"
        " inference worker process)"
    )
    batching = (
        f"MLServer adaptive batching: max_batch_size {MAX_BATCH_SIZE},"
        f" max_batch_time {BATCH_WAIT_S} s"
    )

    def server_settings(self) -> dict[str, Any]:
        """``settings.json``: loopback, our ports."""
        return {
            "host": "127.0.0.1",
            "http_port": self.port,
            "grpc_port": self.port + 10,
            "metrics_port": self.port + 20,
        }

    def model_settings(self, model: str) -> dict[str, Any]:
        """``<model>/model-settings.json``."""
        return {
            "name": model,
            "implementation": RUNTIME,
            "max_batch_size": MAX_BATCH_SIZE,
            "max_batch_time": BATCH_WAIT_S,
        }

    def argv(self, model: str, workdir: Path) -> list[str]:
        """Write the settings into ``workdir``; ``mlserver start workdir``."""
        (workdir / model).mkdir(parents=True, exist_ok=True)
        (workdir / "settings.json").write_text(json.dumps(self.server_settings(), indent=2))
        settings = json.dumps(self.model_settings(model), indent=2)
        (workdir / model / "model-settings.json").write_text(settings)
        return [str(self.python().parent / "mlserver"), "start", str(workdir)]

    def ports(self) -> list[int]:
        """HTTP, gRPC and metrics."""
        return [self.port, self.port + 10, self.port + 20]

    def endpoints(self, model: str) -> list[Endpoint]:
        """V2 JSON ``/v2/models/<model>/infer``."""
        path = f"/v2/models/{model}/infer"
        return [Endpoint(self.name, "v2", path, v2_body(model), v2_extract(model))]

    def settings(self, model: str) -> dict[str, Any]:
        """Both settings files as written."""
        return {
            **super().settings(model),
            "settings.json": self.server_settings(),
            "model-settings.json": self.model_settings(model),
        }
