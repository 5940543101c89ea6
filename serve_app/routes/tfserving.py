"""TensorFlow Serving REST routes: ``/v1/models/{name}[/versions/{v}|/labels/{l}]...``."""

from fastapi import Request
from fastapi.responses import Response

from serve_app.errors import NotFound
from serve_app.http import JSONWithNaN
from serve_app.protocols import tfserving
from serve_app.request import CLASSIFY, PREDICT, REGRESS
from serve_app.routes.common import ModelRouter


class TFServingRoutes(ModelRouter):
    """Status, metadata, predict, classify and regress, as TF Serving answers them."""

    async def tfserving_get(self, path: str) -> Response:
        """Model status, or ``.../metadata``."""
        route = tfserving.parse_model_path(path)
        handle = await self.model_handle(route.name)
        if route.action == "status":
            status = handle.model_status.remote(route.version, route.label)
            statuses = await self.answer(route.name, status)
            if not statuses:
                raise NotFound(f"model '{route.name}' version {route.version} not found")
            return JSONWithNaN({"model_version_status": statuses})
        if route.action == "metadata":
            metadata = handle.model_metadata.remote(route.version, route.label)
            return JSONWithNaN(await self.answer(route.name, metadata))
        raise NotFound(f"/v1/models/{path} answers POST, not GET")

    async def tfserving_post(self, path: str, request: Request) -> Response:
        """``:predict`` (row or columnar), ``:classify`` and ``:regress``."""
        route = tfserving.parse_model_path(path)
        if route.action not in (PREDICT, CLASSIFY, REGRESS):
            raise NotFound(f"/v1/models/{path}: POST needs :predict, :classify or :regress")
        handle = await self.model_handle(route.name)
        body = await self.json_body(request)
        if route.action == PREDICT:
            predict_request, row_format = tfserving.decode_predict(body)
        else:
            predict_request = tfserving.decode_examples(body, route.action)
        self.check_rows(predict_request)
        predict_request.version = route.version
        predict_request.label = route.label
        outputs = await self.answer(route.name, handle.predict.remote(predict_request))
        if route.action == CLASSIFY:
            return JSONWithNaN(tfserving.encode_classify(outputs))
        if route.action == REGRESS:
            return JSONWithNaN(tfserving.encode_regress(outputs))
        return JSONWithNaN(tfserving.encode_predict(outputs, row_format))
