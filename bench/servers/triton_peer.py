"""Triton Inference Server through PyTriton, with Triton's dynamic batcher (32 rows, 5 ms).

PyTriton runs only under Debian's ``/usr/bin/python3`` here (3.11.2; on the pyenv 3.11.7 it
fails with pytriton issue #51), so its venv is made from that interpreter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.servers.base import (
    BATCH_WAIT_S,
    MAX_BATCH_SIZE,
    VENVS,
    Endpoint,
    GrpcEndpoint,
    Server,
    v2_body,
    v2_extract,
    v2_grpc_endpoint,
)


class Triton(Server):
    """``nvidia-pytriton``: the bundled ``tritonserver`` + the model in a Python process."""

    name = "triton"
    port = 8105
    grpc_port = port + 10  # pytriton_app: gRPC on BENCH_PORT + 10, metrics on + 20
    venv = VENVS / "pytriton"
    packages = ("nvidia-pytriton", "tritonclient", "numpy", "tensorflow-cpu", "torch")
    configured_as = (
        "PyTriton: tritonserver (HTTP/gRPC/metrics) + the Python backend stub + the model"
        " in the PyTriton process; one model instance"
    )
    batching = (
        f"Triton dynamic batching: max_batch_size {MAX_BATCH_SIZE},"
        f" max_queue_delay_microseconds {round(BATCH_WAIT_S * 1e6)}"
    )

    def argv(self, model: str, workdir: Path) -> list[str]:
        """``python -m bench.servers.apps.pytriton_app`` under the pytriton venv."""
        return [str(self.python()), "-m", "bench.servers.apps.pytriton_app"]

    def env(self, model: str) -> dict[str, str]:
        """Batching settings for the app."""
        env = super().env(model)
        env.update(
            BENCH_MAX_BATCH_SIZE=str(MAX_BATCH_SIZE),
            BENCH_MAX_QUEUE_DELAY_US=str(round(BATCH_WAIT_S * 1e6)),
        )
        return env

    def ports(self) -> list[int]:
        """HTTP, gRPC and metrics."""
        return [self.port, int(self.grpc_port), self.port + 20]

    def endpoints(self, model: str) -> list[Endpoint]:
        """V2 JSON; a batched BYTES input of shape (1,) per row is ``[1, 1]`` per request."""
        path = f"/v2/models/{model}/infer"
        body = v2_body(model, text_shape=(1, 1))
        return [Endpoint(self.name, "v2", path, body, v2_extract(model))]

    def grpc_endpoints(self, model: str) -> list[GrpcEndpoint]:
        """V2 gRPC ``ModelInfer`` with raw tensors, as ``tritonclient.grpc`` sends it."""
        return [v2_grpc_endpoint(f"{self.name} (grpc)", model, text_shape=(1, 1))]

    def settings(self, model: str) -> dict[str, Any]:
        """The bound model's config."""
        return {
            **super().settings(model),
            "model_config": {
                "max_batch_size": MAX_BATCH_SIZE,
                "dynamic_batching": {"max_queue_delay_microseconds": round(BATCH_WAIT_S * 1e6)},
            },
        }
