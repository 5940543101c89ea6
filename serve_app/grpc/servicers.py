"""The gRPC calls over the data plane: TF Serving's ``PredictionService`` and ``ModelService``,
and the Open Inference Protocol's ``GRPCInferenceService``.

Every call goes the same way (``_serve``): the data plane's call scope opened from the gRPC
metadata (bearer token from ``authorization``, the timeout from the gRPC deadline, Serve's
request id; ``serve_app/call.py``), the size limit, then a pure codec decodes the request
(``serve_app/protocols/tfserving_proto.py``, ``v2_proto.py``), the data plane answers and
the codec encodes the answer. A ``ServingError`` becomes the service's status code
(``serve_app/grpc/status.py``) with the error's message as the details; a bug of ours is
INTERNAL without a traceback. Each RPC's function is named after it (``model_infer`` for
``ModelInfer``): the ingress's methods are made from ``services.METHODS`` by that rule.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import grpc

from serve_app import __version__
from serve_app.call import CallContext
from serve_app.dataplane import DataPlane
from serve_app.errors import DeadlineExceeded, NotFound, PayloadTooLarge, ServingError
from serve_app.grpc.services import DEADLINE_KEY, REQUEST_ID_KEY
from serve_app.grpc.status import details, tfserving_code, triton_code
from serve_app.guard import serve_request_id
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
    """One call: the call scope from the gRPC metadata (the bearer token from
    ``authorization``, the timeout from the gRPC deadline, Serve's request id), the message's
    size, ``answer(ctx)``; a ``ServingError`` as the service's status code."""
    settings = plane.settings
    metadata = dict(grpc_context.invocation_metadata())
    request_id = metadata.get(REQUEST_ID_KEY) or serve_request_id()
    call = plane.open_call(f"gRPC {rpc}", request_id)
    status, code = 200, grpc.StatusCode.OK
    try:
        call.admit(metadata.get("authorization"), _timeout(metadata.get(DEADLINE_KEY)), open_call)
        if len(body) > settings.max_request_bytes:
            raise PayloadTooLarge(
                f"request message of {len(body)} bytes exceeds the limit of"
                f" {settings.max_request_bytes} bytes (max_request_bytes)"
            )
        call.hold(len(body))
        return await answer(call.ctx)
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
        call.close(status, code.name)


def _timeout(deadline: str | None) -> str | None:
    """The call's timeout as the REST header would give it: what its gRPC deadline leaves
    (None, the default, when it has none)."""
    if deadline is None:
        return None
    try:
        remaining = float(deadline) - time.time()
    except ValueError:  # set by our proxy hook; a client's own value is dropped there
        return None
    if math.isnan(remaining):
        return None
    if remaining <= 0:
        raise DeadlineExceeded("the call's gRPC deadline had passed when it reached the ingress")
    return repr(remaining)


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
        model = await plane.lookup(ctx, target.name)
        version, outputs = await plane.infer(ctx, model, request)
        return tfs.encode_predict(target, version, outputs)

    return await _serve(plane, "Predict", grpc_context, body, answer, tfserving_code)


async def classify(plane: DataPlane, body: bytes, grpc_context: Any) -> Any:
    return await _examples(plane, body, grpc_context, CLASSIFY, "Classify")


async def regress(plane: DataPlane, body: bytes, grpc_context: Any) -> Any:
    return await _examples(plane, body, grpc_context, REGRESS, "Regress")


async def _examples(plane: DataPlane, body: bytes, grpc_context: Any, method: str, rpc: str) -> Any:
    async def answer(ctx: CallContext) -> Any:
        target, request = await plane.decode(ctx, len(body), tfs.decode_examples, body, method)
        model = await plane.lookup(ctx, target.name)
        version, outputs = await plane.infer(ctx, model, request)
        return tfs.encode_examples(target, version, method, outputs)

    return await _serve(plane, rpc, grpc_context, body, answer, tfserving_code)


async def multi_inference(plane: DataPlane, body: bytes, grpc_context: Any) -> Any:
    """Each task is one classify or regress request of the same examples (TF Serving runs
    them as one session call); they are answered concurrently."""

    async def answer(ctx: CallContext) -> Any:
        decoded = await plane.decode(ctx, len(body), tfs.decode_multi_inference, body)
        model = await plane.lookup(ctx, decoded.target.name)
        answers = await _all([plane.infer(ctx, model, request) for _, request in decoded.tasks])
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
        model = await plane.lookup(ctx, decoded.name)
        version, outputs = await plane.infer(ctx, model, decoded.request)
        return v2_proto.encode_infer(decoded, version, outputs)

    return await _serve(plane, "ModelInfer", grpc_context, body, answer, triton_code)
