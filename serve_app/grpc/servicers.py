"""The gRPC calls over the data plane: TF Serving's ``PredictionService`` and ``ModelService``,
and the Open Inference Protocol's ``GRPCInferenceService``.

Every call goes the same way (``_serve``): the call context from the gRPC metadata (bearer
token from ``authorization``, the deadline from the gRPC deadline, Serve's request id), the
size limit, then a pure codec decodes the request (``serve_app/protocols/tfserving_proto.py``,
``v2_proto.py``), the data plane answers and the codec encodes the answer. A ``ServingError``
becomes the service's status code (``serve_app/grpc/status.py``) with the error's message as
the details; a bug of ours is INTERNAL without a traceback. The ingress's RPC methods
(``serve_app/ingress.py``) delegate here, one line each.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import grpc

from serve_app import __version__, metrics
from serve_app.dataplane import DataPlane
from serve_app.errors import DeadlineExceeded, NotFound, PayloadTooLarge, ServingError
from serve_app.grpc.services import DEADLINE_KEY
from serve_app.grpc.status import details, tfserving_code, triton_code
from serve_app.guard import (
    CallContext,
    Settings,
    _serve_request_id,
    check_auth,
    deadline_margin,
    effective_timeout,
)
from serve_app.protocols import tfserving_proto as tfs
from serve_app.protocols import v2, v2_proto
from serve_app.replica_api import ReplicaMethod
from serve_app.request import CLASSIFY, REGRESS
from serve_app.routes.v2 import EXTENSIONS, SERVER_NAME

logger = logging.getLogger("ray.serve")

Answer = Callable[[CallContext], Awaitable[Any]]
CodeOf = Callable[[ServingError, str], grpc.StatusCode]


class _NoMessage:
    """The return value of a failed call: Serve serializes whatever the method returns, and the
    client reads only the status."""

    @staticmethod
    def SerializeToString() -> bytes:
        return b""


NO_MESSAGE = _NoMessage()


async def _serve(
    plane: DataPlane,
    rpc: str,
    grpc_context: Any,
    body: bytes,
    answer: Answer,
    code_of: CodeOf,
    open_call: bool = False,
) -> Any:
    """One call: guards, limits, ``answer(ctx)``, errors as status codes, metrics, log."""
    started = time.monotonic()
    settings = plane.settings
    metadata = dict(grpc_context.invocation_metadata())
    ctx = CallContext(_serve_request_id())
    status, code = 200, grpc.StatusCode.OK
    try:
        if settings.tokens and not open_call:
            check_auth(metadata.get("authorization"), settings.tokens)
        timeout = _timeout(metadata.get(DEADLINE_KEY), settings)
        ctx.deadline = started + timeout - deadline_margin(timeout)
        if len(body) > settings.max_request_bytes:
            raise PayloadTooLarge(
                f"request message of {len(body)} bytes exceeds the limit of"
                f" {settings.max_request_bytes} bytes (max_request_bytes)"
            )
        plane.bodies.take(len(body))
        try:
            return await answer(ctx)
        finally:
            plane.bodies.give(len(body))
    except ServingError as exc:
        status, code = exc.status_code, code_of(exc, rpc)
        grpc_context.set_code(code)
        grpc_context.set_details(details(exc))
        return NO_MESSAGE
    except asyncio.CancelledError:  # the client went away, or its deadline passed
        status, code = 499, grpc.StatusCode.CANCELLED
        raise
    except Exception as exc:  # a bug of ours: INTERNAL, never a traceback for the client
        logger.exception("unexpected error in the ingress (gRPC %s)", rpc)
        status, code = 500, grpc.StatusCode.INTERNAL
        grpc_context.set_code(code)
        grpc_context.set_details(f"internal error ({type(exc).__name__})")
        return NO_MESSAGE
    finally:
        elapsed = time.monotonic() - started
        metrics.record_request(ctx.model, status, elapsed)
        if settings.access_log:
            logger.info(
                "gRPC %s -> %s in %.1f ms (model %s, request id %s)",
                rpc,
                code.name,
                elapsed * 1000,
                ctx.model,
                ctx.request_id,
            )


def _timeout(deadline: str | None, settings: Settings) -> float:
    """The call's timeout: what its gRPC deadline leaves (bounded by the maximum, as the
    REST header is), or the default when it has none."""
    if deadline is None:
        return settings.request_timeout_s
    try:
        remaining = float(deadline) - time.time()
    except ValueError:  # set by our proxy hook; a client's own value is dropped there
        return settings.request_timeout_s
    if math.isnan(remaining):
        return settings.request_timeout_s
    if remaining <= 0:
        raise DeadlineExceeded("the call's gRPC deadline had passed when it reached the ingress")
    return effective_timeout(repr(remaining), settings)


async def _all(calls: list[Coroutine[Any, Any, Any]]) -> list[Any]:
    """Await every call; the first error cancels the others."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


# --- TF Serving: tensorflow.serving.PredictionService, ModelService -------------------------


async def predict(plane: DataPlane, body: bytes, grpc_context: Any) -> Any:
    async def answer(ctx: CallContext) -> Any:
        limit = plane.settings.max_request_bytes
        target, request = await plane.decode(ctx, len(body), tfs.decode_predict, body, limit)
        version, outputs = await plane.infer(ctx, target.name, request)
        return tfs.encode_predict(target, version, outputs)

    return await _serve(plane, "Predict", grpc_context, body, answer, tfserving_code)


async def classify(plane: DataPlane, body: bytes, grpc_context: Any) -> Any:
    return await _examples(plane, body, grpc_context, CLASSIFY, "Classify")


async def regress(plane: DataPlane, body: bytes, grpc_context: Any) -> Any:
    return await _examples(plane, body, grpc_context, REGRESS, "Regress")


async def _examples(plane: DataPlane, body: bytes, grpc_context: Any, method: str, rpc: str) -> Any:
    async def answer(ctx: CallContext) -> Any:
        target, request = await plane.decode(ctx, len(body), tfs.decode_examples, body, method)
        version, outputs = await plane.infer(ctx, target.name, request)
        return tfs.encode_examples(target, version, method, outputs)

    return await _serve(plane, rpc, grpc_context, body, answer, tfserving_code)


async def multi_inference(plane: DataPlane, body: bytes, grpc_context: Any) -> Any:
    """Each task is one classify or regress request of the same examples (TF Serving runs
    them as one session call); they are answered concurrently."""

    async def answer(ctx: CallContext) -> Any:
        decoded = await plane.decode(ctx, len(body), tfs.decode_multi_inference, body)
        name = decoded.target.name
        answers = await _all([plane.infer(ctx, name, request) for _, request in decoded.tasks])
        return tfs.encode_multi_inference(decoded, answers)

    return await _serve(plane, "MultiInference", grpc_context, body, answer, tfserving_code)


async def get_model_metadata(plane: DataPlane, body: bytes, grpc_context: Any) -> Any:
    async def answer(ctx: CallContext) -> Any:
        target = tfs.decode_metadata_request(body)
        metadata = await plane.call(
            ctx, target.name, ReplicaMethod.MODEL_METADATA, target.version, target.label
        )
        return tfs.encode_metadata(target.name, metadata)

    return await _serve(plane, "GetModelMetadata", grpc_context, body, answer, tfserving_code)


async def get_model_status(plane: DataPlane, body: bytes, grpc_context: Any) -> Any:
    async def answer(ctx: CallContext) -> Any:
        target = tfs.decode_status_request(body)
        statuses = await plane.call(
            ctx, target.name, ReplicaMethod.MODEL_STATUS, target.version, target.label
        )
        if not statuses:
            raise NotFound(f"model '{target.name}' version {target.version} not found")
        return tfs.encode_status(statuses)

    return await _serve(plane, "GetModelStatus", grpc_context, body, answer, tfserving_code)


# --- Open Inference Protocol: inference.GRPCInferenceService ---------------------------------


async def server_live(plane: DataPlane, body: bytes, grpc_context: Any) -> Any:
    async def answer(ctx: CallContext) -> Any:
        return v2_proto.ServerLiveResponseProto(live=True)

    return await _serve(plane, "ServerLive", grpc_context, body, answer, triton_code, True)


async def server_ready(plane: DataPlane, body: bytes, grpc_context: Any) -> Any:
    """Ready when every model can answer (Triton's strict readiness, as on REST)."""

    async def answer(ctx: CallContext) -> Any:
        return v2_proto.ServerReadyResponseProto(ready=await plane.ready(ctx))

    return await _serve(plane, "ServerReady", grpc_context, body, answer, triton_code, True)


async def model_ready(plane: DataPlane, body: bytes, grpc_context: Any) -> Any:
    async def answer(ctx: CallContext) -> Any:
        name, version = v2_proto.decode_model_request(v2_proto.ModelReadyRequestProto, body)
        ready = await plane.model_ready(ctx, name, version)
        return v2_proto.ModelReadyResponseProto(ready=ready)

    return await _serve(plane, "ModelReady", grpc_context, body, answer, triton_code)


async def server_metadata(plane: DataPlane, body: bytes, grpc_context: Any) -> Any:
    async def answer(ctx: CallContext) -> Any:
        return v2_proto.ServerMetadataResponseProto(
            name=SERVER_NAME, version=__version__, extensions=EXTENSIONS
        )

    return await _serve(plane, "ServerMetadata", grpc_context, body, answer, triton_code)


async def model_metadata(plane: DataPlane, body: bytes, grpc_context: Any) -> Any:
    async def answer(ctx: CallContext) -> Any:
        name, version = v2_proto.decode_model_request(v2_proto.ModelMetadataRequestProto, body)
        io = await plane.call(ctx, name, ReplicaMethod.MODEL_IO, version, None)
        return v2_proto.encode_metadata(v2.model_metadata(name, io["versions"], io["platform"], io))

    return await _serve(plane, "ModelMetadata", grpc_context, body, answer, triton_code)


async def model_infer(plane: DataPlane, body: bytes, grpc_context: Any) -> Any:
    async def answer(ctx: CallContext) -> Any:
        decoded = await plane.decode(ctx, len(body), v2_proto.decode_infer, body)
        version, outputs = await plane.infer(ctx, decoded.name, decoded.request)
        return v2_proto.encode_infer(decoded, version, outputs)

    return await _serve(plane, "ModelInfer", grpc_context, body, answer, triton_code)
