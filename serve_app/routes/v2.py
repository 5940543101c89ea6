"""Open Inference Protocol (KServe V2) routes, with Triton's binary data extension.

Where the specs disagree, this server answers: health and readiness in the status code
(200 yes, 503 no) with a JSON body ``{"live": bool}`` / ``{"ready": bool}``; model
metadata lists the served version in ``versions``.
"""

from __future__ import annotations

from serve_app import __version__
from serve_app.call import CallContext
from serve_app.dataplane import DataPlane
from serve_app.errors import InvalidInput, NotFound, tfserving_error_body
from serve_app.http import Reply, json_reply
from serve_app.protocols import v2
from serve_app.replica_api import ReplicaMethod
from serve_app.request import MAX_VERSION_DIGITS
from serve_app.rest import Handler, RestRequest, Route

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
    model = await plane.lookup(ctx, name)
    decoded = await plane.decode(ctx, len(body), v2.decode_infer, body, header_length)
    decoded.request.version = version
    decoded.request.label = label
    served, outputs = await plane.infer(ctx, model, decoded.request)
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


def _version(r: RestRequest) -> int | None:
    text = r.params.get("version")
    return None if text is None else parse_version(text)


async def _server_metadata(r: RestRequest) -> Reply:
    return server_metadata()


async def _live(r: RestRequest) -> Reply:
    return live()


async def _ready(r: RestRequest) -> Reply:
    return await ready(r.plane, r.ctx)


async def _model_metadata(r: RestRequest) -> Reply:
    params = r.params
    return await model_metadata(r.plane, r.ctx, params["name"], _version(r), params.get("label"))


async def _model_ready(r: RestRequest) -> Reply:
    params = r.params
    return await model_ready(r.plane, r.ctx, params["name"], _version(r), params.get("label"))


async def _model_stats(r: RestRequest) -> Reply:
    return await model_stats(r.plane, r.ctx, r.params["name"])


async def _infer(r: RestRequest) -> Reply:
    params = r.params
    version = _version(r)
    length = r.headers.get(_HEADER_LENGTH)
    return await infer(r.plane, r.ctx, params["name"], version, params.get("label"), r.body, length)


_HEADER_LENGTH = v2.HEADER_LENGTH.lower()
_MODEL = "/v2/models/{name}"
_VERSION = _MODEL + "/versions/{version}"
# Version labels: an extension of the protocol, as TF Serving has /labels/{label}.
_LABEL = _MODEL + "/labels/{label}"


def _rows(method: str, suffix: str, handler: Handler, summary: str) -> list[Route]:
    """A model route, and the same for a version and for a label."""
    return [
        Route(method, base + suffix, handler, tfserving_error_body, f"{summary}{what}")
        for base, what in ((_MODEL, ""), (_VERSION, " (a version)"), (_LABEL, " (a label)"))
    ]


# The Open Inference Protocol (V2) over REST.
ROUTES = [
    *_rows("POST", "/infer", _infer, "V2 inference (JSON, or Triton's binary extension)"),
    Route("GET", "/v2", _server_metadata, tfserving_error_body, "V2 server metadata"),
    Route("GET", "/v2/health/live", _live, tfserving_error_body, "V2 liveness"),
    Route("GET", "/v2/health/ready", _ready, tfserving_error_body, "V2 readiness: every model"),
    *_rows("GET", "", _model_metadata, "V2 model metadata"),
    *_rows("GET", "/ready", _model_ready, "V2 model readiness"),
    Route(
        "GET",
        _MODEL + "/stats",
        _model_stats,
        tfserving_error_body,
        "Batching statistics of one replica (Triton's statistics extension)",
    ),
]
