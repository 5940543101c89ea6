"""The ingress deployment: one ASGI app speaking three protocols, and the gRPC services, routing
by model name.

Each replica builds its data plane (``serve_app/dataplane.py``: calls, model handles, pools,
coalescing, the fleet's health) and its ASGI app (``serve_app/asgi.py``: each request a
call, dispatched by the REST route table; FastAPI only for the OpenAPI pages). Serve calls
the gRPC methods by the RPC's name (``grpc_options`` in ``serve_config.yaml``,
``serve_app/grpc/services.py``); they are made from the table of served RPCs, each handing
the call to the function of ``serve_app/grpc/servicers.py`` named after it. No TensorFlow
or torch is imported here, so the ingress starts fast and stays small.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app import guard
from serve_app.asgi import build_asgi_app
from serve_app.dataplane import DataPlane, ModelRoute
from serve_app.fast_path import fast_path_hint, fast_path_on
from serve_app.fastapi_app import build_fastapi_app
from serve_app.grpc import servicers, services
from serve_app.pool_catalog import PoolView

logger = logging.getLogger("ray.serve")


def _grpc_method(rpc: str) -> Callable[..., Awaitable[Any]]:
    """The ingress method Serve calls for ``rpc``: the servicer function named after it. It
    gets the request message's bytes and Serve's gRPC context (by this argument name)."""
    handler = getattr(servicers, services.handler_name(rpc))

    async def method(self: Ingress, request: bytes, grpc_context: Any) -> Any:
        return await handler(self.plane, request, grpc_context)

    method.__name__ = method.__qualname__ = rpc
    method.__doc__ = f"gRPC ``{rpc}``: ``serve_app.grpc.servicers.{handler.__name__}``."
    return method


def _with_grpc_methods(cls: type) -> type:
    """One method per served RPC (``services.METHODS``), named as the RPC: Serve calls the
    ingress method of the RPC's name."""
    for rpc in services.RPCS:
        setattr(cls, rpc, _grpc_method(rpc))
    return cls


@serve.deployment
@serve.ingress()
@_with_grpc_methods
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
        return build_asgi_app(self.plane, build_fastapi_app())
