"""The REST entry: the ingress's ASGI app, one dispatcher over the route table.

Every HTTP request is one call of the data plane (``serve_app/call.py``): opened from its
headers (request id, bearer token, timeout), matched in the route table
(``serve_app/routes/``, ``serve_app/rest.py``), answered by its route's handler, and closed
(metrics, access log) once answered. An error is answered in the body of its route's group.
No web framework is on the request path: FastAPI's routing, dependency injection and
response classes cost several hundred microseconds of CPU per request (``bench/NOTES.md``).
FastAPI serves only the OpenAPI document and its pages (``serve_app/fastapi_app.py``),
generated from the same table.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.datastructures import URL
from starlette.responses import RedirectResponse, StreamingResponse

from serve_app import guard
from serve_app.call import Call
from serve_app.dataplane import DataPlane
from serve_app.errors import MethodNotAllowed, NotFound, ServingError, tfserving_error_body
from serve_app.http import Reply, StreamReply, error_reply, read_body
from serve_app.rest import Match, RestRequest, RouteTable
from serve_app.routes import TABLE

logger = logging.getLogger("ray.serve")

# FastAPI's own pages (the OpenAPI document and its viewers), behind the same guards.
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc")


class RestEntry:
    """The ingress's ASGI app: the route table's dispatcher; ``docs`` answers FastAPI's
    pages (and the lifespan)."""

    def __init__(self, plane: DataPlane, docs: Any, table: RouteTable = TABLE) -> None:
        self.plane = plane
        self.docs = docs
        self.table = table

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan: the FastAPI app's
            await self.docs(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope.get("path", "")
        request_id = headers.get(guard.REQUEST_ID_HEADER) or guard.serve_request_id()
        call = self.plane.open_call(f"{scope.get('method', '-')} {path}", request_id)
        status = 500

        async def send_tracking(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            route = route_path(scope)
            found = self.table.match(scope["method"], route)
            errors = found.errors or tfserving_error_body
            try:
                call.admit(
                    guard.header_bytes(headers.get("authorization")),
                    headers.get(guard.TIMEOUT_HEADER),
                    guard.is_open(path, scope.get("root_path", "")),
                )
                if found.route is None:
                    await self._unrouted(found, route, scope, receive, send_tracking)
                    return
            except ServingError as exc:
                await error_reply(exc, errors).send(send_tracking)
                return
            reply = await self._answer(found, call, receive, headers)
            if isinstance(reply, StreamReply):
                streaming = StreamingResponse(reply.chunks, media_type=reply.media_type)
                await streaming(scope, receive, send_tracking)
            else:
                await reply.send(send_tracking)
        finally:
            call.close(status)

    async def _answer(
        self, found: Match, call: Call, receive: Any, headers: dict[str, str]
    ) -> Reply | StreamReply:
        """The route's answer, or its error in the route group's body."""
        route = found.route
        assert route is not None
        body = b""
        try:
            if route.reads_body:
                settings = self.plane.settings
                body = await read_body(
                    receive,
                    headers.get("content-length"),
                    settings.max_request_bytes,
                    self.plane.bodies,
                    settings.body_idle_timeout_s,
                    call.ctx.deadline,
                )
                call.held(len(body))
            request = RestRequest(self.plane, call.ctx, found.params, body, headers)
            return await route.handler(request)
        except ServingError as exc:
            return error_reply(exc, route.errors)
        except Exception as exc:  # a bug of ours: the protocol's 500 body, never a traceback
            logger.exception("unexpected error in the ingress")
            return error_reply(ServingError(f"internal error ({type(exc).__name__})"), route.errors)

    async def _unrouted(
        self, found: Match, path: str, scope: dict, receive: Any, send: Any
    ) -> None:
        """A path no route answers: FastAPI's pages, a redirect to the path with its trailing
        slash toggled (307, as Starlette), 405 for a route's path with another method, else
        404."""
        if path in DOCS_PATHS:
            await self.docs(scope, receive, send)
        elif found.redirect is not None:
            redirect = dict(scope)
            full = scope["path"]
            redirect["path"] = full.rstrip("/") if full.endswith("/") else full + "/"
            await RedirectResponse(url=str(URL(scope=redirect)))(scope, receive, send)
        elif found.allowed:
            raise MethodNotAllowed("Method Not Allowed")
        else:
            raise NotFound("Not Found")


def route_path(scope: dict) -> str:
    """The path below the application's route prefix (``root_path``), as Starlette routes."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :]
    return path


def build_asgi_app(plane: DataPlane, docs: Any) -> Any:
    """The REST entry over the route table; ``docs``: FastAPI's OpenAPI pages."""
    return RestEntry(plane, docs)
