"""The ingress's ASGI app: the guards, the inference hot paths, and FastAPI for the rest.

``POST .../v1/models/{model}[...]:predict|:classify|:regress``, ``POST .../v2/models/{model}
[...]/infer`` and ``POST .../v1/embeddings`` carry almost all the traffic. They are matched
here and answered without FastAPI's routing, dependency injection and response classes,
which cost several hundred microseconds of CPU per request (``bench/NOTES.md``); the other
routes go to the FastAPI app. Both write their bodies with ``serve_app/http.py``, so a
route answers byte for byte the same either way.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from serve_app import guard
from serve_app.dataplane import DataPlane
from serve_app.errors import ServingError
from serve_app.http import Reply, StreamReply, error_reply, read_body
from serve_app.protocols.v2 import HEADER_LENGTH
from serve_app.routes import openai, tfserving, v2
from serve_app.routes.v2 import parse_version

logger = logging.getLogger("ray.serve")

_V2_INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+)|/labels/([^/]+))?/infer$")
_TFSERVING = "/v1/models/"
_EMBEDDINGS = "/v1/embeddings"
_V2_HEADER_LENGTH = HEADER_LENGTH.lower()

Handler = Callable[[DataPlane, guard.CallContext, bytes, dict[str, str]], Awaitable[Reply]]


def hot_handler(method: str, path: str) -> Handler | None:
    """The hot-path handler of a request, or None for the FastAPI routes."""
    if method != "POST":
        return None
    if path.startswith(_TFSERVING):
        rest = path[len(_TFSERVING) :]

        async def predict(plane: DataPlane, ctx: Any, body: bytes, headers: Any) -> Reply:
            return await tfserving.post(plane, ctx, rest, body)

        return predict
    match = _V2_INFER.match(path)
    if match is not None:
        name, version, label = match.groups()

        async def infer(plane: DataPlane, ctx: Any, body: bytes, headers: Any) -> Reply:
            number = parse_version(version) if version is not None else None
            length = headers.get(_V2_HEADER_LENGTH)
            return await v2.infer(plane, ctx, name, number, label, body, length)

        return infer
    if path in (_EMBEDDINGS, _EMBEDDINGS + "/"):

        async def embed(plane: DataPlane, ctx: Any, body: bytes, headers: Any) -> Reply:
            return await openai.embeddings(plane, ctx, body)

        return embed
    return None


class HotRoutes:
    """ASGI app: hot paths answered here, everything else passed to ``fallback``."""

    def __init__(self, plane: DataPlane, fallback: Any) -> None:
        self.plane = plane
        self.fallback = fallback

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = route_path(scope) if scope["type"] == "http" else ""
        handler = hot_handler(scope["method"], path) if path else None
        if handler is None:
            await self._fallback(scope, receive, send)
            return
        ctx = guard.current() or guard.CallContext()
        headers = scope.get("serve_app.headers") or {}
        body = b""
        try:
            settings = self.plane.settings
            body = await read_body(
                receive,
                headers.get("content-length"),
                settings.max_request_bytes,
                self.plane.bodies,
                settings.body_idle_timeout_s,
                ctx.deadline,
            )
            reply: Reply | StreamReply = await handler(self.plane, ctx, body, headers)
        except ServingError as exc:
            reply = error_reply(path, exc)
        except Exception as exc:  # a bug of ours: the protocol's 500 body, never a traceback
            logger.exception("unexpected error in the ingress")
            reply = error_reply(path, ServingError(f"internal error ({type(exc).__name__})"))
        finally:
            self.plane.bodies.give(len(body))
        assert isinstance(reply, Reply)
        await reply.send(send)

    async def _fallback(self, scope: dict, receive: Any, send: Any) -> None:
        started = False

        async def tracking(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.fallback(scope, receive, tracking)
        except Exception as exc:
            # FastAPI answered with its exception handler's body already (and re-raised).
            logger.exception("unexpected error in the ingress")
            if not started and scope["type"] == "http":
                error = ServingError(f"internal error ({type(exc).__name__})")
                await error_reply(scope.get("path", ""), error).send(send)


def route_path(scope: dict) -> str:
    """The path below the application's route prefix (``root_path``), as Starlette routes."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :]
    return path


def build_asgi_app(plane: DataPlane, fallback: Any) -> Any:
    """Guards around the hot routes around the FastAPI app."""
    return guard.GuardMiddleware(HotRoutes(plane, fallback), plane.settings.access_log)
