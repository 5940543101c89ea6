"""The gRPC services, as ``grpc_options.grpc_servicer_functions`` of ``serve_config.yaml``.

Serve starts a gRPC server (its proxy, or each ingress replica with direct ingress), calls
these functions to learn the services' methods, and sends each call to the ingress method of
the RPC's name (``Predict``, ``ModelInfer``, ...). The methods are registered without message
classes: a call's request arrives as its bytes, so neither the proxy nor the ingress imports
TF Serving's messages (which import TensorFlow); the ingress decodes them itself
(``serve_app/protocols/protos.py``).

Serve does not pass the call's gRPC deadline on to the deployment. Its servicer context
(``RayServegRPCContext``) copies the invocation metadata, so the deadline is added to the
metadata under ``DEADLINE_KEY`` (absolute, ``time.time()`` seconds), by wrapping the
server's handler factory (Serve's ``gRPCGenericServer.service_handler_factory``) when these
functions run. A deadline sent in that key by a client is dropped. On an ingress replica's
own server (direct ingress) that wrapper also sends each call straight to the ingress's
method, without Serve's per-request wrapper (``serve_app/grpc/direct.py``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import grpc

DEADLINE_KEY = "serve-app-deadline"
# Serve's gRPC request id: read from this metadata key, sent back as this trailer.
REQUEST_ID_KEY = "request_id"
# grpc_options.grpc_servicer_functions: every service (serve_config.yaml, the tests' Serve).
SERVICER_FUNCTIONS = [
    f"{__name__}.add_PredictionServiceServicer_to_server",
    f"{__name__}.add_ModelServiceServicer_to_server",
    f"{__name__}.add_GRPCInferenceServiceServicer_to_server",
]

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
INFERENCE_SERVICE = "inference.GRPCInferenceService"
# The RPCs served; others of these services answer UNIMPLEMENTED (ModelService's
# HandleReloadConfigRequest, Triton's repository, statistics and shared-memory extensions).
METHODS = {
    PREDICTION_SERVICE: ("Classify", "Regress", "Predict", "MultiInference", "GetModelMetadata"),
    MODEL_SERVICE: ("GetModelStatus",),
    INFERENCE_SERVICE: (
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    ),
}

# Every served RPC's name, once: the ingress's gRPC methods are made from it.
RPCS = tuple(rpc for methods in METHODS.values() for rpc in methods)
# The full method names of the served services (Serve's own, e.g. its health service, and
# any other keep Serve's path).
SERVED_PREFIXES = tuple(f"/{service}/" for service in METHODS)


def handler_name(rpc: str) -> str:
    """The function of ``serve_app/grpc/servicers.py`` that answers ``rpc``: its name in
    snake case (``GetModelMetadata`` -> ``get_model_metadata``)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", rpc).lower()


def add_PredictionServiceServicer_to_server(servicer: Any, server: Any) -> None:
    """TF Serving's ``tensorflow.serving.PredictionService``."""
    _register(servicer, server, PREDICTION_SERVICE)


def add_ModelServiceServicer_to_server(servicer: Any, server: Any) -> None:
    """TF Serving's ``tensorflow.serving.ModelService`` (``GetModelStatus``)."""
    _register(servicer, server, MODEL_SERVICE)


def add_GRPCInferenceServiceServicer_to_server(servicer: Any, server: Any) -> None:
    """The Open Inference Protocol's ``inference.GRPCInferenceService``."""
    _register(servicer, server, INFERENCE_SERVICE)


def _register(servicer: Any, server: Any, service: str) -> None:
    _pass_deadline(server)
    handlers = {
        method: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method),  # Serve replaces it with its call to the ingress
            request_deserializer=None,  # the request's bytes, decoded by the ingress
            response_serializer=_serialize,  # Serve sends the bytes it serialized itself
        )
        for method in METHODS[service]
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()


def _pass_deadline(server: Any) -> None:
    """Wrap the server's handler factory (once) so unary calls carry their deadline; on an
    ingress replica's own server (Serve's direct ingress), they go straight to the ingress's
    methods (``serve_app/grpc/direct.py``)."""
    factory = getattr(server, "service_handler_factory", None)
    if factory is None or getattr(factory, "passes_deadline", False):
        return
    from serve_app.grpc.direct import DirectCalls

    direct = DirectCalls.for_factory(factory)

    def with_deadline(service_method: str, streaming_type: Any) -> Callable:
        handler = factory(service_method=service_method, streaming_type=streaming_type)
        if getattr(streaming_type, "name", "") != "UNARY_UNARY":
            return handler
        if direct is not None and service_method.startswith(SERVED_PREFIXES):
            return direct.unary(service_method, DeadlineContext)

        async def unary_unary(request: Any, context: Any) -> Any:
            return await handler(request, DeadlineContext(context))

        return unary_unary

    with_deadline.passes_deadline = True  # type: ignore[attr-defined]
    server.service_handler_factory = with_deadline


class DeadlineContext:
    """A servicer context whose invocation metadata carries the call's deadline; everything
    else is the context's own."""

    def __init__(self, context: Any) -> None:
        self._context = context
        metadata = tuple(
            (key, value) for key, value in context.invocation_metadata() if key != DEADLINE_KEY
        )
        # Serve's request id key, read here while the metadata is copied anyway.
        self.request_id = next((v for k, v in metadata if k == REQUEST_ID_KEY), None)
        remaining = context.time_remaining()
        if remaining is not None:
            metadata += ((DEADLINE_KEY, repr(time.time() + remaining)),)
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self._metadata

    def set_request_id(self, request_id: str) -> None:
        """The request id given by the server, added to the invocation metadata."""
        self.request_id = request_id
        self._metadata += ((REQUEST_ID_KEY, request_id),)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)
