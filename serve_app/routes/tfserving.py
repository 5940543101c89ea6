"""TensorFlow Serving REST routes: ``/v1/models/{name}[/versions/{v}|/labels/{l}]...``."""

from __future__ import annotations

from typing import Any

from serve_app.call import CallContext
from serve_app.dataplane import DataPlane
from serve_app.errors import NotFound, tfserving_error_body
from serve_app.http import Reply, json_reply
from serve_app.jsonio import parse_json
from serve_app.protocols import tfserving
from serve_app.replica_api import ReplicaMethod
from serve_app.request import CLASSIFY, JSON_ROWS, PREDICT, REGRESS, PredictRequest
from serve_app.rest import RestRequest, Route


def _decode(
    plane: DataPlane, action: str, body: bytes, json_instances: bool
) -> tuple[PredictRequest, bool]:
    """A predict, classify or regress body; its instances are counted before they are
    decoded (413 past ``max_instances_per_request``)."""
    document = parse_json(body)
    plane.check_instances(_instance_count(document))
    if action == PREDICT:
        return tfserving.decode_predict(document, json_instances)
    return tfserving.decode_examples(document, action), True


def _instance_count(document: Any) -> int:
    """Instances a body declares: rows of ``instances``, ``inputs`` or ``examples``."""
    if not isinstance(document, dict):
        return 0
    value = next((document[k] for k in ("instances", "inputs", "examples") if k in document), None)
    if isinstance(value, dict) and value:
        value = next(iter(value.values()))
    return len(value) if isinstance(value, list) else 1


async def get(plane: DataPlane, ctx: CallContext, path: str) -> Reply:
    """Model status, or ``.../metadata``."""
    route = tfserving.parse_model_path(path)
    if route.action == "status":
        statuses = await plane.call(
            ctx, route.name, ReplicaMethod.MODEL_STATUS, route.version, route.label
        )
        if not statuses:
            raise NotFound(f"model '{route.name}' version {route.version} not found")
        return json_reply({"model_version_status": statuses})
    if route.action == "metadata":
        return json_reply(
            await plane.call(
                ctx, route.name, ReplicaMethod.MODEL_METADATA, route.version, route.label
            )
        )
    raise NotFound(f"/v1/models/{path} answers POST, not GET")


async def post(plane: DataPlane, ctx: CallContext, path: str, body: bytes) -> Reply:
    """``:predict`` (row or columnar), ``:classify`` and ``:regress``."""
    route = tfserving.parse_model_path(path)
    if route.action not in (PREDICT, CLASSIFY, REGRESS):
        raise NotFound(f"/v1/models/{path}: POST needs :predict, :classify or :regress")
    model = await plane.lookup(ctx, route.name)
    request, row_format = await plane.decode(
        ctx, len(body), _decode, plane, route.action, body, model.route.json_instances
    )
    request.version = route.version
    request.label = route.label
    _, outputs = await plane.infer(ctx, model, request)
    if JSON_ROWS in outputs:  # rows the model's postprocess wrote as JSON already
        return Reply(b'{"predictions":[' + b",".join(outputs[JSON_ROWS]) + b"]}")
    if route.action == CLASSIFY:
        return json_reply(tfserving.encode_classify(outputs))
    if route.action == REGRESS:
        return json_reply(tfserving.encode_regress(outputs))
    return json_reply(tfserving.encode_predict(outputs, row_format))


async def _get_route(r: RestRequest) -> Reply:
    return await get(r.plane, r.ctx, r.params["path"])


async def _post_route(r: RestRequest) -> Reply:
    return await post(r.plane, r.ctx, r.params["path"], r.body)


# TF Serving REST: /v1/models/{name}[/versions/{v}|/labels/{l}][/metadata|:predict|...].
ROUTES = [
    Route(
        "POST",
        "/v1/models/{path:path}",
        _post_route,
        tfserving_error_body,
        "TF Serving REST: {name}[/versions/{v}|/labels/{l}]:predict, :classify or :regress",
    ),
    Route(
        "GET",
        "/v1/models/{path:path}",
        _get_route,
        tfserving_error_body,
        "TF Serving REST: {name}[/versions/{v}|/labels/{l}] status, or .../metadata",
    ),
]
