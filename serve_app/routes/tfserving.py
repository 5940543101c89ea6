"""TensorFlow Serving REST routes: ``/v1/models/{name}[/versions/{v}|/labels/{l}]...``."""

from __future__ import annotations

from serve_app.dataplane import CallContext, DataPlane
from serve_app.errors import NotFound
from serve_app.http import Reply, json_reply, parse_json
from serve_app.protocols import tfserving
from serve_app.request import CLASSIFY, PREDICT, REGRESS


async def get(plane: DataPlane, ctx: CallContext, path: str) -> Reply:
    """Model status, or ``.../metadata``."""
    route = tfserving.parse_model_path(path)
    if route.action == "status":
        statuses = await plane.call(ctx, route.name, "model_status", route.version, route.label)
        if not statuses:
            raise NotFound(f"model '{route.name}' version {route.version} not found")
        return json_reply({"model_version_status": statuses})
    if route.action == "metadata":
        return json_reply(
            await plane.call(ctx, route.name, "model_metadata", route.version, route.label)
        )
    raise NotFound(f"/v1/models/{path} answers POST, not GET")


async def post(plane: DataPlane, ctx: CallContext, path: str, body: bytes) -> Reply:
    """``:predict`` (row or columnar), ``:classify`` and ``:regress``."""
    route = tfserving.parse_model_path(path)
    if route.action not in (PREDICT, CLASSIFY, REGRESS):
        raise NotFound(f"/v1/models/{path}: POST needs :predict, :classify or :regress")
    await plane.lookup(ctx, route.name)
    document = parse_json(body)
    row_format = True
    if route.action == PREDICT:
        request, row_format = tfserving.decode_predict(document)
    else:
        request = tfserving.decode_examples(document, route.action)
    request.version = route.version
    request.label = route.label
    _, outputs = await plane.infer(ctx, route.name, request)
    if route.action == CLASSIFY:
        return json_reply(tfserving.encode_classify(outputs))
    if route.action == REGRESS:
        return json_reply(tfserving.encode_regress(outputs))
    return json_reply(tfserving.encode_predict(outputs, row_format))
