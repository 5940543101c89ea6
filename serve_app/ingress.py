"""The ingress deployment: one ASGI app speaking three protocols, and the gRPC services, routing
by model name.

Each replica builds its data plane (``serve_app/dataplane.py``: model handles, pools,
coalescing, the fleet's health) and its ASGI app (``serve_app/asgi.py``: the guards, the
inference hot paths, FastAPI for the other routes). Serve calls the gRPC methods by the RPC's
name (``grpc_options`` in ``serve_config.yaml``, ``serve_app/grpc/services.py``); each hands
the call to ``serve_app/grpc/servicers.py``. No TensorFlow or torch is imported here, so the
ingress starts fast and stays small.
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
from serve_app.fast_path import fast_path_hint, fast_path_on
from serve_app.fastapi_app import build_fastapi_app
from serve_app.grpc import servicers
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
        if not fast_path_on(dict(os.environ)):
            logger.warning(fast_path_hint())

    def __serve_build_asgi_app__(self) -> Any:
        return build_asgi_app(self.plane, build_fastapi_app(self.plane))

    # --- gRPC: tensorflow.serving.PredictionService and ModelService -----------------------
    # Each gets the request message's bytes and Serve's gRPC context (by this argument name).

    async def Predict(self, request: bytes, grpc_context: Any) -> Any:
        return await servicers.predict(self.plane, request, grpc_context)

    async def Classify(self, request: bytes, grpc_context: Any) -> Any:
        return await servicers.classify(self.plane, request, grpc_context)

    async def Regress(self, request: bytes, grpc_context: Any) -> Any:
        return await servicers.regress(self.plane, request, grpc_context)

    async def MultiInference(self, request: bytes, grpc_context: Any) -> Any:
        return await servicers.multi_inference(self.plane, request, grpc_context)

    async def GetModelMetadata(self, request: bytes, grpc_context: Any) -> Any:
        return await servicers.get_model_metadata(self.plane, request, grpc_context)

    async def GetModelStatus(self, request: bytes, grpc_context: Any) -> Any:
        return await servicers.get_model_status(self.plane, request, grpc_context)

    # --- gRPC: inference.GRPCInferenceService (Open Inference Protocol) --------------------

    async def ServerLive(self, request: bytes, grpc_context: Any) -> Any:
        return await servicers.server_live(self.plane, request, grpc_context)

    async def ServerReady(self, request: bytes, grpc_context: Any) -> Any:
        return await servicers.server_ready(self.plane, request, grpc_context)

    async def ModelReady(self, request: bytes, grpc_context: Any) -> Any:
        return await servicers.model_ready(self.plane, request, grpc_context)

    async def ServerMetadata(self, request: bytes, grpc_context: Any) -> Any:
        return await servicers.server_metadata(self.plane, request, grpc_context)

    async def ModelMetadata(self, request: bytes, grpc_context: Any) -> Any:
        return await servicers.model_metadata(self.plane, request, grpc_context)

    async def ModelInfer(self, request: bytes, grpc_context: Any) -> Any:
        return await servicers.model_infer(self.plane, request, grpc_context)
