"""One Ray cluster and one Serve instance for the whole integration session.

Applications are deployed the way ``serve run serve_config.yaml`` and ``serve deploy`` do it:
a Serve config whose application runs ``serve_app.app:build_app`` on the cluster.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from ray import serve
from ray.serve.schema import ServeDeploySchema

from serve_app.examples import build_model_repository
from serve_app.fast_path import TRANSPORT_ENV
from serve_app.grpc.services import SERVICER_FUNCTIONS
from tests.helpers import free_port, wait_for

# Logical CPUs for scheduling fractional replicas; the machine has 2 real cores.
RAY_CPUS = 6
APP_START_TIMEOUT_S = 240


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default fleet's models, built offline into a temporary repository."""
    root = tmp_path_factory.mktemp("model_repository")
    build_model_repository(root)
    return root


@pytest.fixture(scope="session")
def grpc_port() -> int:
    """The port of Serve's gRPC server (TF Serving's and the Open Inference Protocol's
    services, as in serve_config.yaml)."""
    return free_port()


@pytest.fixture(scope="session")
def serve_url(grpc_port: int) -> Iterator[str]:
    """Start Ray and Serve once; tear both down at the end, leaving no processes behind."""
    port = free_port()
    # The transports' caps, as `make run` sets them: Ray's processes read them when they start.
    os.environ.update(TRANSPORT_ENV)
    ray.init(num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False)
    serve.start(
        http_options={"host": "127.0.0.1", "port": port},
        grpc_options={"port": grpc_port, "grpc_servicer_functions": SERVICER_FUNCTIONS},
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


# Every application deployed so far: a Serve config lists them all, or Serve deletes the rest.
_applications: dict[str, dict[str, Any]] = {}


def deploy(
    app_name: str,
    args: dict[str, Any],
    deployments: list[dict] | None = None,
    runtime_env: dict[str, Any] | None = None,
) -> None:
    """Deploy one application from a Serve config, as `serve deploy` / `serve run` do."""
    application: dict[str, Any] = {
        "name": app_name,
        "route_prefix": "/" if app_name == "fleet" else f"/{app_name}",
        "import_path": "serve_app.app:build_app",
        "args": copy.deepcopy(args),
    }
    if deployments:
        application["deployments"] = deployments
    if runtime_env:
        application["runtime_env"] = copy.deepcopy(runtime_env)
    _applications[app_name] = application
    config = ServeDeploySchema.model_validate({"applications": list(_applications.values())})
    serve.context._get_global_client().deploy_apps(config, _blocking=False)


# Autoscaling of a model that goes to zero replicas 1 s after its last request.
QUICK_SCALE_TO_ZERO = {
    "min_replicas": 0,
    "max_replicas": 1,
    "initial_replicas": 1,
    "downscale_delay_s": 1,
    "downscale_to_zero_delay_s": 1,
}


def model_app(name: str, args: dict[str, Any], user_config: dict | None = None) -> dict[str, Any]:
    """A TensorFlow model's own application (``build_model``, no route prefix), as
    serve_config.yaml writes one; the fleet's ingress finds and serves it."""
    application: dict[str, Any] = {
        "name": name,
        "route_prefix": None,
        "import_path": "serve_app.app:build_model",
        "args": {"name": name, "framework": "tensorflow", **args},
    }
    if user_config is not None:
        application["deployments"] = [{"name": name, "user_config": user_config}]
    return application


def deploy_apps(applications: list[dict[str, Any]], remove: tuple[str, ...] = ()) -> None:
    """Deploy (or change) several applications of any builder in one Serve config, and
    remove others, as editing serve_config.yaml and re-running `serve deploy` does."""
    for name in remove:
        _applications.pop(name, None)
    for application in applications:
        _applications[application["name"]] = copy.deepcopy(application)
    config = ServeDeploySchema.model_validate({"applications": list(_applications.values())})
    serve.context._get_global_client().deploy_apps(config, _blocking=False)


def deploy_and_wait(
    app_name: str,
    args: dict[str, Any],
    deployments: list[dict] | None = None,
    expect: tuple[str, ...] = ("RUNNING",),
    runtime_env: dict[str, Any] | None = None,
) -> Any:
    """Deploy and wait until the application reaches one of ``expect``; return its status."""
    deploy(app_name, args, deployments, runtime_env)

    def settled() -> Any:
        app = serve.status().applications.get(app_name)
        return app if app is not None and app.status.value in expect else None

    return wait_for(settled, APP_START_TIMEOUT_S, f"application '{app_name}' to reach {expect}")


def undeploy(app_name: str) -> None:
    """Delete one application, and forget it so later deploys do not bring it back."""
    _applications.pop(app_name, None)
    serve.delete(app_name)
