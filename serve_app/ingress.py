"""The HTTP ingress: one FastAPI app speaking three protocols, routing by model name.

This class is the whole HTTP surface, one thin method per route; the protocols' logic lives
in ``serve_app.routes``. (Serve's class-based views bind only methods defined here.)
HTTP only: no TensorFlow or torch is imported here, so the ingress starts fast and stays small.
"""

from typing import Any

from fastapi import Request
from fastapi.responses import Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app import guard
from serve_app.fleet_status import FleetStatus
from serve_app.http import api
from serve_app.pool_catalog import PoolCatalog, PoolView
from serve_app.routes.openai import OpenAIRoutes
from serve_app.routes.tfserving import TFServingRoutes
from serve_app.routes.v2 import V2Routes, parse_version


@serve.deployment
@serve.ingress(api)
class Ingress(TFServingRoutes, V2Routes, OpenAIRoutes):
    """TF Serving REST, the Open Inference Protocol and OpenAI routes over the model handles."""

    def __init__(
        self,
        handles: dict[str, DeploymentHandle],
        kinds: dict[str, str],
        settings: dict[str, Any],
        pool_handles: dict[str, DeploymentHandle] | None = None,
        pool_settings: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.handles = handles
        self.kinds = kinds
        guard.configure(guard.Settings.from_args(settings))
        pool_handles = pool_handles or {}
        pool_settings = pool_settings or {}
        pools = {
            name: PoolView(handle, **pool_settings[name]) for name, handle in pool_handles.items()
        }
        self.pools = PoolCatalog(pools, set(handles))
        deployments = list(handles) + list(pools)
        self.fleet = FleetStatus(serve.get_replica_context().app_name, deployments)

    # --- TensorFlow Serving REST ---------------------------------------------------------

    @api.get("/v1/models/{path:path}")
    async def get_tfserving(self, path: str) -> Response:
        """Model status, or ``.../metadata``."""
        return await self.tfserving_get(path)

    @api.post("/v1/models/{path:path}")
    async def post_tfserving(self, path: str, request: Request) -> Response:
        """``:predict``, ``:classify`` and ``:regress``."""
        return await self.tfserving_post(path, request)

    # --- Open Inference Protocol (V2) ----------------------------------------------------

    @api.get("/v2")
    async def get_v2(self) -> Response:
        return await self.v2_server_metadata()

    @api.get("/v2/health/live")
    async def get_v2_live(self) -> Response:
        return await self.v2_live()

    @api.get("/v2/health/ready")
    async def get_v2_ready(self) -> Response:
        return await self.v2_ready()

    @api.get("/v2/models/{name}")
    async def get_v2_model(self, name: str) -> Response:
        return await self.v2_model_metadata(name, None)

    @api.get("/v2/models/{name}/versions/{version}")
    async def get_v2_model_version(self, name: str, version: str) -> Response:
        return await self.v2_model_metadata(name, parse_version(version))

    @api.get("/v2/models/{name}/ready")
    async def get_v2_model_ready(self, name: str) -> Response:
        return await self.v2_model_ready(name, None)

    @api.get("/v2/models/{name}/versions/{version}/ready")
    async def get_v2_model_version_ready(self, name: str, version: str) -> Response:
        return await self.v2_model_ready(name, parse_version(version))

    @api.post("/v2/models/{name}/infer")
    async def post_v2_infer(self, name: str, request: Request) -> Response:
        return await self.v2_infer(name, None, request)

    @api.post("/v2/models/{name}/versions/{version}/infer")
    async def post_v2_version_infer(self, name: str, version: str, request: Request) -> Response:
        return await self.v2_infer(name, parse_version(version), request)

    # Version labels: an extension of the protocol, as TF Serving has /labels/{label}.

    @api.get("/v2/models/{name}/labels/{label}")
    async def get_v2_model_label(self, name: str, label: str) -> Response:
        return await self.v2_model_metadata(name, None, label)

    @api.get("/v2/models/{name}/labels/{label}/ready")
    async def get_v2_model_label_ready(self, name: str, label: str) -> Response:
        return await self.v2_model_ready(name, None, label)

    @api.post("/v2/models/{name}/labels/{label}/infer")
    async def post_v2_label_infer(self, name: str, label: str, request: Request) -> Response:
        return await self.v2_infer(name, None, request, label)

    @api.get("/v2/models/{name}/stats")
    async def get_v2_model_stats(self, name: str) -> Response:
        return await self.v2_model_stats(name)

    # --- OpenAI-compatible ----------------------------------------------------------------

    @api.get("/v1/models")
    async def get_openai_models(self) -> Response:
        return await self.openai_models()

    @api.post("/v1/completions")
    async def post_openai_completions(self, request: Request) -> Response:
        return await self.openai_completions(request)

    @api.post("/v1/embeddings")
    async def post_openai_embeddings(self, request: Request) -> Response:
        return await self.openai_embeddings(request)
