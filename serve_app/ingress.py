"""The HTTP ingress: decodes protocol bodies, routes by model name to that model's deployment.

HTTP only: no TensorFlow or torch is imported here, so the ingress starts fast and stays small.
"""

import asyncio
import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle, DeploymentResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.errors import (
    InvalidInput,
    ModelUnavailable,
    NotFound,
    PayloadTooLarge,
    ServingError,
    tfserving_error_body,
)
from serve_app.fleet_status import POLL_INTERVAL_S as FLEET_POLL_INTERVAL_S
from serve_app.fleet_status import FleetStatus
from serve_app.protocols import tfserving

logger = logging.getLogger("ray.serve")

api = FastAPI(title="serve_app", description="Multi-model inference on Ray Serve")


class JSONWithNaN(JSONResponse):
    """JSON that writes NaN and Infinity as TF Serving does, instead of failing."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=True, separators=(",", ":")).encode("utf-8")


@api.exception_handler(ServingError)
async def _serving_error(_: Request, exc: ServingError) -> Response:
    return JSONWithNaN(tfserving_error_body(exc), status_code=exc.status_code)


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
    return JSONWithNaN({"error": str(exc.detail)}, status_code=exc.status_code)


@api.exception_handler(Exception)
async def _unexpected(_: Request, exc: Exception) -> Response:
    logger.exception("unexpected error in the ingress")
    return JSONWithNaN({"error": f"internal error ({type(exc).__name__})"}, status_code=500)


async def _result(response: DeploymentResponse) -> Any:
    try:
        return await response
    except ServingError:
        raise
    except RayActorError as exc:
        raise ModelUnavailable(f"the model's replica died ({type(exc).__name__})") from None


@serve.deployment
@serve.ingress(api)
class Ingress:
    """Routes ``/v1/models/{name}...`` (TensorFlow Serving REST) to the model deployments."""

    def __init__(self, handles: dict[str, DeploymentHandle], max_request_bytes: int) -> None:
        self.handles = handles
        self.max_request_bytes = max_request_bytes
        context = serve.get_replica_context()
        self.fleet = FleetStatus(context.app_name, list(handles))

    async def _handle(self, name: str) -> DeploymentHandle:
        handle = self.handles.get(name)
        if handle is None:
            known = ", ".join(sorted(self.handles))
            raise NotFound(f"model '{name}' not found (known models: {known})")
        await self.fleet.ready()
        self.fleet.check(name)
        return handle

    async def _answer(self, name: str, response: DeploymentResponse) -> Any:
        """Await a model's answer; give up with 503 if the model fails meanwhile, never hang.

        A call queued for a deployment whose replicas all failed to start would wait forever,
        so the fleet status is re-checked while it waits.
        """
        call = asyncio.ensure_future(_result(response))
        try:
            while True:
                done, _ = await asyncio.wait({call}, timeout=FLEET_POLL_INTERVAL_S)
                if done:
                    return call.result()
                self.fleet.check(name)
        except ModelUnavailable:
            response.cancel()
            call.cancel()
            raise

    async def _json_body(self, request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_request_bytes:
            raise PayloadTooLarge(
                f"request body of {declared} bytes exceeds the limit of"
                f" {self.max_request_bytes} bytes"
            )
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > self.max_request_bytes:
                raise PayloadTooLarge(
                    f"request body exceeds the limit of {self.max_request_bytes} bytes"
                )
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"request body is not valid JSON: {exc}") from None

    @api.get("/v1/models/{path:path}")
    async def tfserving_get(self, path: str) -> Response:
        """Model status, or ``.../metadata``."""
        route = tfserving.parse_model_path(path)
        handle = await self._handle(route.name)
        if route.action == "status":
            statuses = await self._answer(route.name, handle.model_status.remote())
            if route.version is not None:
                statuses = [s for s in statuses if s["version"] == str(route.version)]
                if not statuses:
                    raise NotFound(f"model '{route.name}' version {route.version} not found")
            return JSONWithNaN({"model_version_status": statuses})
        if route.action == "metadata":
            return JSONWithNaN(
                await self._answer(route.name, handle.model_metadata.remote(route.version))
            )
        raise NotFound(f"use POST for /v1/models/{path}")

    @api.post("/v1/models/{path:path}")
    async def tfserving_post(self, path: str, request: Request) -> Response:
        """``:predict`` in row (``instances``) or columnar (``inputs``) format."""
        route = tfserving.parse_model_path(path)
        if route.action != "predict":
            raise NotFound(f"/v1/models/{path}: supported here is ':predict'")
        handle = await self._handle(route.name)
        predict_request, row_format = tfserving.decode_predict(await self._json_body(request))
        predict_request.version = route.version
        predict_request.label = route.label
        outputs = await self._answer(route.name, handle.predict.remote(predict_request))
        return JSONWithNaN(tfserving.encode_predict(outputs, row_format))

    @api.get("/v2/models/{name}/stats")
    async def model_stats(self, name: str) -> Response:
        """Batching statistics of one replica (Triton's statistics extension shape)."""
        handle = await self._handle(name)
        return JSONWithNaN(await self._answer(name, handle.model_stats.remote()))
