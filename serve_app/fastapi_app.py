"""The FastAPI app of the ingress's other routes: status, metadata, health, completions.

The inference routes (predict, infer, embeddings) are served by ``serve_app/asgi.py``
without FastAPI, which costs a few hundred microseconds per request; everything else
comes here, with FastAPI's path parameters and OpenAPI docs. The app is built per ingress
replica, its routes closures over that replica's data plane; the guards (auth, deadline,
request id) ran before, and the call context is ``guard.current()``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app import guard, status_page
from serve_app.dataplane import CallContext, DataPlane
from serve_app.errors import ServingError
from serve_app.fleet_view import FleetView
from serve_app.http import Reply, StreamReply, error_reply, read_body
from serve_app.jsonio import json_bytes
from serve_app.routes import openai, tfserving, v2
from serve_app.routes.v2 import parse_version


def build_fastapi_app(plane: DataPlane) -> FastAPI:
    """The app for every route that is not an inference hot path."""
    api = FastAPI(
        title="serve-app",
        description="TensorFlow Serving REST, Open Inference Protocol (V2) and OpenAI-compatible"
        " routes for a fleet of models on Ray Serve",
    )

    def ctx() -> CallContext:
        return guard.current() or CallContext()

    # --- TensorFlow Serving REST -----------------------------------------------------------

    @api.get("/v1/models/{path:path}")
    async def get_tfserving(path: str) -> Response:
        """Model status, or ``.../metadata``."""
        return _response(await tfserving.get(plane, ctx(), path))

    # --- Open Inference Protocol (V2) ------------------------------------------------------

    @api.get("/v2")
    async def get_v2() -> Response:
        return _response(v2.server_metadata())

    @api.get("/v2/health/live")
    async def get_v2_live() -> Response:
        return _response(v2.live())

    @api.get("/v2/health/ready")
    async def get_v2_ready() -> Response:
        return _response(await v2.ready(plane, ctx()))

    @api.get("/v2/models/{name}")
    async def get_v2_model(name: str) -> Response:
        return _response(await v2.model_metadata(plane, ctx(), name, None))

    @api.get("/v2/models/{name}/versions/{version}")
    async def get_v2_model_version(name: str, version: str) -> Response:
        return _response(await v2.model_metadata(plane, ctx(), name, parse_version(version)))

    @api.get("/v2/models/{name}/ready")
    async def get_v2_model_ready(name: str) -> Response:
        return _response(await v2.model_ready(plane, ctx(), name, None))

    @api.get("/v2/models/{name}/versions/{version}/ready")
    async def get_v2_model_version_ready(name: str, version: str) -> Response:
        return _response(await v2.model_ready(plane, ctx(), name, parse_version(version)))

    # Version labels: an extension of the protocol, as TF Serving has /labels/{label}.

    @api.get("/v2/models/{name}/labels/{label}")
    async def get_v2_model_label(name: str, label: str) -> Response:
        return _response(await v2.model_metadata(plane, ctx(), name, None, label))

    @api.get("/v2/models/{name}/labels/{label}/ready")
    async def get_v2_model_label_ready(name: str, label: str) -> Response:
        return _response(await v2.model_ready(plane, ctx(), name, None, label))

    @api.get("/v2/models/{name}/stats")
    async def get_v2_model_stats(name: str) -> Response:
        return _response(await v2.model_stats(plane, ctx(), name))

    # --- OpenAI-compatible -----------------------------------------------------------------

    @api.get("/v1/models")
    async def get_openai_models() -> Response:
        return _response(await openai.models(plane))

    async def posted(request: Request, route: Callable[..., Awaitable[Any]]) -> Response:
        """A POST route's answer to its body, read within the ingress's limits."""
        settings = plane.settings
        body = await read_body(
            request.receive,
            request.headers.get("content-length"),
            settings.max_request_bytes,
            plane.bodies,
            settings.body_idle_timeout_s,
            ctx().deadline,
        )
        try:
            return _response(await route(plane, ctx(), body))
        finally:
            plane.bodies.give(len(body))

    @api.post("/v1/completions")
    async def post_openai_completions(request: Request) -> Response:
        return await posted(request, openai.completions)

    @api.post("/v1/chat/completions")
    async def post_openai_chat_completions(request: Request) -> Response:
        return await posted(request, openai.chat_completions)

    # --- the status page -------------------------------------------------------------------
    # ``/`` is static (no token: it is also what a load balancer checks); the data it shows
    # comes from ``/fleet``, guarded like every other route.

    view = FleetView(plane)
    page_headers = {
        "cache-control": "no-cache",
        "content-security-policy": status_page.CONTENT_SECURITY_POLICY,
        "x-content-type-options": "nosniff",
    }

    @api.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def get_status_page() -> Response:
        return Response(status_page.PAGE, 200, page_headers, "text/html")

    @api.get("/fleet")
    async def get_fleet() -> Response:
        """Every model and pool: status, reason, replicas, versions, recent traffic."""
        body = json_bytes(await view.snapshot())
        return Response(body, 200, {"cache-control": "no-store"}, "application/json")

    # --- errors ----------------------------------------------------------------------------

    @api.exception_handler(ServingError)
    async def _serving_error(request: Request, exc: ServingError) -> Response:
        return _response(error_reply(request.url.path, exc))

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        error = ServingError(str(exc.detail))
        error.status_code = exc.status_code
        return _response(error_reply(request.url.path, error))

    @api.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        # A bug of ours: the protocol's 500 body, never a traceback (Starlette re-raises it
        # after this answer; the ASGI wrapper logs it).
        error = ServingError(f"internal error ({type(exc).__name__})")
        return _response(error_reply(request.url.path, error))

    return api


def _response(reply: Reply | StreamReply) -> Any:
    if isinstance(reply, StreamReply):
        return StreamingResponse(reply.chunks, media_type=reply.media_type)
    return Response(reply.body, reply.status, reply.headers, reply.media_type)
