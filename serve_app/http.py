"""The FastAPI application shared by every route module: JSON responses and error bodies."""

import json
import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.errors import ServingError, tfserving_error_body
from serve_app.guard import GuardMiddleware
from serve_app.protocols import openai

logger = logging.getLogger("ray.serve")

api = FastAPI(
    title="serve-app",
    description="TensorFlow Serving REST, Open Inference Protocol (V2) and OpenAI-compatible"
    " routes for a fleet of models on Ray Serve",
)
OPENAI_PATHS = ("/v1/completions", "/v1/embeddings", "/v1/models")
api.add_middleware(GuardMiddleware)


class JSONWithNaN(JSONResponse):
    """JSON that writes NaN and Infinity as TF Serving does, instead of failing.

    orjson writes a response much faster than ``json``: an OpenAI embedding response (384
    floats) takes 10 µs instead of 270 µs. But it writes NaN and Infinity as ``null``. So
    a body with no ``null`` in it had none of them and is sent as is; one with a ``null``
    is written again by ``json``, which keeps NaN and Infinity as TF Serving writes them.
    """

    def render(self, content: Any) -> bytes:
        try:
            fast = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
        except TypeError:  # e.g. an integer past 64 bits: json writes it
            fast = b"null"
        if b"null" not in fast:
            return fast
        return json.dumps(content, allow_nan=True, separators=(",", ":")).encode("utf-8")


def error_response(request: Request, error: ServingError) -> Response:
    """The error in the body shape of the protocol the request spoke."""
    return error_body_response(request.url.path, error)


def error_body_response(path: str, error: ServingError) -> Response:
    """The error for a request to ``path``, with the error's headers (Retry-After, ...)."""
    headers = dict(getattr(error, "headers", None) or {})
    if path.rstrip("/").endswith(OPENAI_PATHS):
        body = openai.error_body(error)
    else:
        body = tfserving_error_body(error)
    return JSONWithNaN(body, status_code=error.status_code, headers=headers)


@api.exception_handler(ServingError)
async def _serving_error(request: Request, exc: ServingError) -> Response:
    return error_response(request, exc)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    error = ServingError(str(exc.detail))
    error.status_code = exc.status_code
    return error_response(request, error)


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("unexpected error in the ingress")
    return error_response(request, ServingError(f"internal error ({type(exc).__name__})"))
