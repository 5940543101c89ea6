"""This service as a user gets it: ``make run``'s ``serve run serve_config.yaml``.

The whole default fleet (the ingress application and one application per model, every
model of ``serve_config.yaml`` loaded) from the repository root, with the fast-path
environment (``serve_app.fast_path.FAST_PATH_ENV``) exactly as ``make run`` sets it, on the
ports the file names (HTTP 8000, gRPC 9000). Nothing is tuned for the benchmark: whatever
makes it fast must be in the shipped ``serve_config.yaml``.

The local Ray node gets its own temp dir (``RAY_TMPDIR``) and no ``RAY_ADDRESS``, so it
never joins another Ray (a test run's) on this machine, and stopping it touches only the
processes ``serve run`` started (``ray stop --force`` would kill every Ray here).
"""

from __future__ import annotations

import copy
import json
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from bench.models import REPO_ROOT, SENTENCE, kind
from bench.servers.base import (
    Endpoint,
    GrpcEndpoint,
    Server,
    instance,
    key_extract,
    tfserving_grpc_endpoint,
    v2_body,
    v2_extract,
    v2_grpc_endpoint,
)
from serve_app.builders import MODEL_BUILDER
from serve_app.fast_path import FAST_PATH_ENV

CONFIG = "serve_config.yaml"  # relative to the repository root, as `make run` names it
RAY_TMPDIR = "/tmp/ray-bench"
# With HAProxy on the ports above, Serve also starts its fallback proxies on these
# (RAY_SERVE_FALLBACK_PROXY_HTTP_PORT / _GRPC_PORT): they must be free too.
FALLBACK_PORTS = (8500, 9500)


# ``digits-python``: the default fleet plus the digits model wrapped as a Python model, its
# application as digits' own but for the framework (bench/python_digits.py).
PYTHON_DIGITS = "digits-python"
ONNX_MINILM = "minilm-onnx"
ONNX_APP: dict[str, Any] = {
    "name": ONNX_MINILM,
    "route_prefix": None,
    "import_path": MODEL_BUILDER,
    "logging_config": {"enable_access_log": False},
    "runtime_env": {"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}},
    "args": {
        "name": ONNX_MINILM,
        "framework": "onnx",
        "task": "feature-extraction",
        "uri": "model_repository/minilm-onnx",
        "batching": {"max_batch_size": 32, "batch_wait_timeout_s": 0},
        "resources": {"num_cpus": 0.2},
        "num_replicas": 2,
        "max_queued_requests": 256,
    },
}
PYTHON_DIGITS_CLASS = "bench.python_digits:WrappedDigits"


def load_config(path: Path | None = None) -> dict[str, Any]:
    """``serve_config.yaml`` as parsed."""
    return yaml.safe_load((path or REPO_ROOT / CONFIG).read_text())


def config_for(model: str) -> dict[str, Any]:
    """The config served for ``model``: ``serve_config.yaml``, plus the wrapped digits
    application for ``digits-python``."""
    config = load_config()
    if model == ONNX_MINILM:  # the application docs/own-models.md's "ONNX Runtime" shows
        config["applications"].append(copy.deepcopy(ONNX_APP))
    if model == PYTHON_DIGITS:
        digits = next(a for a in config["applications"] if a["name"] == "digits")
        wrapped = copy.deepcopy(digits)
        wrapped["name"] = PYTHON_DIGITS
        wrapped["args"].update(
            name=PYTHON_DIGITS, framework="python", python={"class": PYTHON_DIGITS_CLASS}
        )
        config["applications"].append(wrapped)
    return config


def fleet_summary(config: dict[str, Any]) -> str:
    """One line for the report: the applications and each model replica's resources."""
    models = []
    for app in config["applications"]:
        args = app.get("args") or {}
        if "name" not in args:
            continue
        cpus = (args.get("resources") or {}).get("num_cpus", "default")
        threads = ((app.get("runtime_env") or {}).get("env_vars") or {}).get("OMP_NUM_THREADS")
        models.append(
            f"{args['name']} (num_cpus {cpus}"
            + (f", OMP_NUM_THREADS {threads})" if threads else ")")
        )
    return f"{len(config['applications'])} applications: the ingress + one per model, " + ", ".join(
        models
    )


class ServeApp(Server):
    """This project's service under ``serve run serve_config.yaml``, as ``make run`` starts it."""

    def fully_started(self) -> bool:
        """Every model has all its replicas running (``GET /fleet``): the first answer may
        come while a model's second replica is still loading."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/fleet", timeout=10) as r:
                fleet = json.loads(r.read())
        except (OSError, ValueError):
            return False
        models = fleet.get("models") or []
        return bool(models) and all(
            (m.get("running_replicas") or 0) >= (m.get("min_replicas") or 1) for m in models
        )

    name = "serve-app"
    models = ("digits", "minilm", "minilm-onnx", PYTHON_DIGITS)
    packages = ("serve-app", "ray", "tensorflow-cpu", "keras", "torch", "transformers", "numpy")
    ready_timeout_s = 420.0
    stop_grace_s = 45.0

    def __init__(self) -> None:
        config = load_config()
        self.port = int(config["http_options"]["port"])
        self.grpc_port = int(config["grpc_options"]["port"])
        self.configured_as = (
            f"`serve run {CONFIG}` from the repository root, as `make run` (the default fleet;"
            f" {fleet_summary(config)}) with the fast-path environment"
            f" ({', '.join(f'{k}={v}' for k, v in FAST_PATH_ENV.items())}: HAProxy -> ingress"
            f" replicas, direct ingress); HTTP {self.port}, gRPC {self.grpc_port}; Ray's local"
            " node started by serve run"
        )

    def unavailable(self) -> str | None:
        """Missing .venv/bin/serve."""
        serve = REPO_ROOT / ".venv" / "bin" / "serve"
        if not serve.exists():
            return f"{serve} is missing: run `make install`"
        return None

    def argv(self, model: str, workdir: Path) -> list[str]:
        """``serve run serve_config.yaml``, run from the repository root (its model URIs
        are relative to it); ``digits-python``: that config plus the wrapped model."""
        config = CONFIG
        if model in (PYTHON_DIGITS, ONNX_MINILM):
            config = str(workdir / "serve_config.yaml")
            Path(config).write_text(yaml.safe_dump(config_for(model), sort_keys=False))
        return [str(REPO_ROOT / ".venv" / "bin" / "serve"), "run", config]

    def env(self, model: str) -> dict[str, str]:
        """``make run``'s fast-path environment; our own Ray temp dir, no usage stats."""
        env = super().env(model)
        env.update(RAY_TMPDIR=RAY_TMPDIR, RAY_USAGE_STATS_ENABLED="0", **FAST_PATH_ENV)
        return env

    def ports(self) -> list[int]:
        """HTTP and gRPC from the config, and Serve's fallback proxies."""
        return [self.port, int(self.grpc_port or 0), *FALLBACK_PORTS]

    def endpoints(self, model: str) -> list[Endpoint]:
        """V2 JSON first (as the V2 peers), then the model's natural protocol."""
        v2 = Endpoint(
            self.name, "v2", f"/v2/models/{model}/infer", v2_body(model), v2_extract(model)
        )
        if kind(model) == "digits":
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

    def grpc_endpoints(self, model: str) -> list[GrpcEndpoint]:
        """V2 gRPC ``ModelInfer``, the text input of shape ``[1]`` (as over REST); for
        digits also TF Serving's ``Predict``, the model's native gRPC (as over REST)."""
        endpoints = [v2_grpc_endpoint(f"{self.name} (grpc)", model)]
        if kind(model) == "digits":
            endpoints.append(tfserving_grpc_endpoint(f"{self.name} (tfserving grpc)", model))
        return endpoints

    def settings(self, model: str) -> dict[str, Any]:
        """The config file as run, and the model's batching from it."""
        config = config_for(model)
        app = next((a for a in config["applications"] if a.get("name") == model), {})
        batching = (app.get("args") or {}).get("batching", {})
        return {
            "configured_as": self.configured_as,
            "batching": f"the service's dynamic batcher (deployments/batcher.py): {batching}",
            "config_file": CONFIG,
            "config": config,
            "fast_path_env": FAST_PATH_ENV,
            "ray_tmpdir": RAY_TMPDIR,
        }
