"""The OpenAPI document of the REST routes, and FastAPI's pages that show it (``/docs``,
``/redoc``, ``/openapi.json``).

FastAPI answers no route of the ingress: the REST entry (``serve_app/asgi.py``) dispatches
every request by the route table (``serve_app/routes/``). Each row of that table is
declared here too, with its path parameters, so that the document lists exactly the routes
served; the endpoints given to FastAPI are never called.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from serve_app.rest import Route, RouteTable
from serve_app.routes import TABLE


def build_fastapi_app(table: RouteTable = TABLE) -> FastAPI:
    """FastAPI with every route of ``table`` declared for its OpenAPI document."""
    api = FastAPI(
        title="serve-app",
        description="TensorFlow Serving REST, Open Inference Protocol (V2) and OpenAI-compatible"
        " routes for a fleet of models on Ray Serve",
    )
    for route in table.routes:
        if route.in_schema:
            api.add_api_route(
                route.path,
                _declared(route),
                methods=[route.method],
                summary=route.summary or None,
                name=f"{route.method.lower()} {route.path}",
            )
    return api


def _declared(route: Route) -> Callable[..., Any]:
    """A stand-in endpoint with the route's path parameters (strings), for the document."""

    async def endpoint(**_: str) -> None:  # pragma: no cover - never called
        raise AssertionError("the REST entry answers every route")

    endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=str)
            for name in route.params
        ]
    )
    return endpoint
