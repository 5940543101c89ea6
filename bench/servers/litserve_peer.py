"""LitServe: one inference worker on the CPU with LitServe's batching (32 rows, 5 ms)."""

from __future__ import annotations

from pathlib import Path

from bench.servers.base import (
    BATCH_WAIT_S,
    MAX_BATCH_SIZE,
    VENVS,
    Endpoint,
    Server,
    instance,
    key_extract,
)


class LitServe(Server):
    """LitServe 0.2 (``LitAPI(max_batch_size, batch_timeout)``)."""

    name = "litserve"
    port = 8102
    venv = VENVS / "litserve"
    packages = ("litserve", "fastapi", "uvicorn", "tensorflow-cpu", "torch", "transformers")
    configured_as = (
        "LitServer(accelerator='cpu', workers_per_device=1): one API server process (uvicorn)"
        " + one inference worker process"
    )
    batching = f"LitServe: max_batch_size {MAX_BATCH_SIZE}, batch_timeout {BATCH_WAIT_S} s"

    def argv(self, model: str, workdir: Path) -> list[str]:
        """``python -m bench.servers.apps.litserve_app``."""
        return [str(self.python()), "-m", "bench.servers.apps.litserve_app"]

    def env(self, model: str) -> dict[str, str]:
        """Batching settings for the app."""
        env = super().env(model)
        env.update(
            BENCH_MAX_BATCH_SIZE=str(MAX_BATCH_SIZE), BENCH_BATCH_TIMEOUT_S=str(BATCH_WAIT_S)
        )
        return env

    def endpoints(self, model: str) -> list[Endpoint]:
        """``POST /predict {"input": x}`` -> ``{"output": y}`` (LitServe has no V2)."""
        body = {"input": instance(model)}
        return [Endpoint(self.name, "json", "/predict", body, key_extract("output"))]
