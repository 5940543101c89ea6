"""This service: ``serve run bench/configs/serve_<model>.yaml`` (Ray Serve, one model).

The bench configs copy ``serve_config.yaml``'s shape with one model each, on port 8010 (so
``make run`` and the e2e tests keep 8000), the same batching as every peer (32 rows, 5 ms),
and ``OMP_NUM_THREADS=2`` in the application's ``runtime_env``: Ray sets
``OMP_NUM_THREADS`` to a replica's ``num_cpus`` (at least 1), which would leave torch one
thread where every other server's framework takes both cores.

The local Ray node gets its own temp dir (``RAY_TMPDIR``) and no ``RAY_ADDRESS``, so it
never joins another Ray (a test run's) on this machine, and stopping it touches only the
processes ``serve run`` started (``ray stop --force`` would kill every Ray here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bench.models import REPO_ROOT, SENTENCE
from bench.servers.base import (
    Endpoint,
    Server,
    instance,
    key_extract,
    v2_body,
    v2_extract,
)
from serve_app.fast_path import FAST_PATH_ENV

CONFIGS = REPO_ROOT / "bench" / "configs"
RAY_TMPDIR = "/tmp/ray-bench"


class ServeApp(Server):
    """This project's service under ``serve run``."""

    name = "serve-app"
    port = 8010
    packages = ("serve-app", "ray", "tensorflow-cpu", "keras", "torch", "transformers", "numpy")
    configured_as = (
        "serve run bench/configs/serve_<model>.yaml with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 and"
        " RAY_SERVE_ENABLE_HA_PROXY=1 (HAProxy -> ingress replicas, direct ingress): ingress"
        " (num_cpus 0.1; 2 replicas for digits, 1 for minilm) + 1 model replica (num_cpus 1,"
        " OMP_NUM_THREADS=2), Ray's local node started by serve run"
    )
    batching = (
        "the service's dynamic batcher (deployments/batcher.py): up to 32 rows (64 for minilm),"
        " formed when the model is free, batch_wait_timeout_s 0"
    )
    ready_timeout_s = 420.0
    stop_grace_s = 45.0

    def config(self, model: str) -> Path:
        """The bench config for ``model``."""
        return CONFIGS / f"serve_{model}.yaml"

    def unavailable(self) -> str | None:
        """Missing .venv/bin/serve or config."""
        serve = REPO_ROOT / ".venv" / "bin" / "serve"
        if not serve.exists():
            return f"{serve} is missing: run `make install`"
        return None

    def argv(self, model: str, workdir: Path) -> list[str]:
        """``serve run`` of the model's bench config."""
        return [str(REPO_ROOT / ".venv" / "bin" / "serve"), "run", str(self.config(model))]

    def env(self, model: str) -> dict[str, str]:
        """Our own Ray temp dir, no usage stats."""
        env = super().env(model)
        env.update(RAY_TMPDIR=RAY_TMPDIR, RAY_USAGE_STATS_ENABLED="0", **FAST_PATH_ENV)
        return env

    def endpoints(self, model: str) -> list[Endpoint]:
        """V2 JSON first (as the V2 peers), then the model's natural protocol."""
        v2 = Endpoint(
            self.name, "v2", f"/v2/models/{model}/infer", v2_body(model), v2_extract(model)
        )
        if model == "digits":
            native = Endpoint(
                f"{self.name} (tfserving)",
                "tfserving",
                f"/v1/models/{model}:predict",
                {"instances": [instance(model)]},
                key_extract("predictions", 0),
            )
        else:
            native = Endpoint(
                f"{self.name} (openai)",
                "openai",
                "/v1/embeddings",
                {"model": model, "input": SENTENCE},
                key_extract("data", 0, "embedding"),
            )
        return [v2, native]

    def settings(self, model: str) -> dict[str, Any]:
        """The config file as run."""
        path = self.config(model)
        return {
            **super().settings(model),
            "config_file": str(path.relative_to(REPO_ROOT)),
            "config": yaml.safe_load(path.read_text()),
            "ray_tmpdir": RAY_TMPDIR,
        }
