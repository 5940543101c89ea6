"""Open Inference Protocol (KServe V2) routes, with Triton's binary data extension.

Where the specs disagree, this server answers: health and readiness in the status code
(200 yes, 503 no) with a JSON body ``{"live": bool}`` / ``{"ready": bool}``; model
metadata lists the served version in ``versions``.
"""

from __future__ import annotations

from serve_app import __version__
from serve_app.dataplane import CallContext, DataPlane
from serve_app.errors import InvalidInput, NotFound
from serve_app.http import Reply, json_reply
from serve_app.protocols import v2
from serve_app.replica_api import ReplicaMethod
from serve_app.request import MAX_VERSION_DIGITS

SERVER_NAME = "serve-app"
EXTENSIONS = ["binary_tensor_data", "statistics"]


def server_metadata() -> Reply:
    return json_reply({"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS})


def live() -> Reply:
    return json_reply({"live": True})


async def ready(plane: DataPlane, ctx: CallContext | None = None) -> Reply:
    """Ready when every model has a replica that can answer (Triton's strict readiness)."""
    is_ready = await plane.ready(ctx)
    return json_reply({"ready": is_ready}, status=200 if is_ready else 503)


async def model_stats(plane: DataPlane, ctx: CallContext, name: str) -> Reply:
    """Batching statistics of one replica (Triton's statistics extension shape)."""
    return json_reply(await plane.call(ctx, name, ReplicaMethod.MODEL_STATS))


async def model_metadata(
    plane: DataPlane, ctx: CallContext, name: str, version: int | None, label: str | None = None
) -> Reply:
    io = await plane.call(ctx, name, ReplicaMethod.MODEL_IO, version, label)
    return json_reply(v2.model_metadata(name, io["versions"], io["platform"], io))


async def model_ready(
    plane: DataPlane, ctx: CallContext, name: str, version: int | None, label: str | None = None
) -> Reply:
    if not await plane.model_ready(ctx, name, version, label):
        return json_reply({"name": name, "ready": False}, status=503)
    return json_reply({"name": name, "ready": True})


async def infer(
    plane: DataPlane,
    ctx: CallContext,
    name: str,
    version: int | None,
    label: str | None,
    body: bytes,
    header_length: str | None,
) -> Reply:
    await plane.lookup(ctx, name)
    decoded = await plane.decode(ctx, len(body), v2.decode_infer, body, header_length)
    decoded.request.version = version
    decoded.request.label = label
    served, outputs = await plane.infer(ctx, name, decoded.request)
    content, json_length = v2.encode_infer(name, served, decoded, outputs)
    if json_length is None:
        return Reply(content)
    return Reply(
        content, media_type="application/octet-stream", headers={v2.HEADER_LENGTH: str(json_length)}
    )


def parse_version(text: str) -> int:
    """A version path segment as an int: 404 if it is not a number, 400 if it is one that no
    version can have (non-ASCII digits, more than 18 digits)."""
    if not text.isdigit():
        raise NotFound(f"version must be a non-negative integer, got '{text[:32]}'")
    if not text.isascii() or len(text) > MAX_VERSION_DIGITS:
        raise InvalidInput(
            f"version must be a non-negative integer of at most {MAX_VERSION_DIGITS} ASCII"
            f" digits, got '{text[:32]}'"
        )
    return int(text)
