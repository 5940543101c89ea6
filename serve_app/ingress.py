"""The ingress deployment: one ASGI app speaking three protocols, routing by model name.

Each replica builds its data plane (``serve_app/dataplane.py``: model handles, pools,
coalescing, the fleet's health) and its ASGI app (``serve_app/asgi.py``: the guards, the
inference hot paths, FastAPI for the other routes). HTTP only: no TensorFlow or torch is
imported here, so the ingress starts fast and stays small.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app import guard
from serve_app.asgi import build_asgi_app
from serve_app.dataplane import DataPlane, ModelRoute
from serve_app.fast_path import FAST_PATH_ENV, fast_path_hint
from serve_app.fastapi_app import build_fastapi_app
from serve_app.pool_catalog import PoolView

logger = logging.getLogger("ray.serve")


@serve.deployment
@serve.ingress()
class Ingress:
    """TF Serving REST, the Open Inference Protocol and OpenAI routes over the model handles."""

    def __init__(
        self,
        handles: dict[str, DeploymentHandle],
        routes: dict[str, dict[str, Any]],
        settings: dict[str, Any],
        pool_handles: dict[str, DeploymentHandle] | None = None,
        pool_settings: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        guard_settings = guard.Settings.from_args(settings)
        guard.configure(guard_settings)
        pool_settings = pool_settings or {}
        pools = {
            name: PoolView(
                handle, pool_settings[name]["kind"], pool_settings[name]["discovery_interval_s"]
            )
            for name, handle in (pool_handles or {}).items()
        }
        pool_routes = {name: ModelRoute(**pool_settings[name]["route"]) for name in pools}
        self.plane = DataPlane(
            serve.get_replica_context().app_name,
            handles,
            {name: ModelRoute(**route) for name, route in routes.items()},
            guard_settings,
            pools,
            pool_routes,
        )
        if any(os.environ.get(name) != value for name, value in FAST_PATH_ENV.items()):
            logger.warning(fast_path_hint())

    def __serve_build_asgi_app__(self) -> Any:
        return build_asgi_app(self.plane, build_fastapi_app(self.plane))
