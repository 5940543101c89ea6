"""Open Inference Protocol (KServe V2) routes, with Triton's binary data extension.

Where the specs disagree, this server answers: health and readiness in the status code
(200 yes, 503 no) with a JSON body ``{"live": bool}`` / ``{"ready": bool}``; model
metadata lists the served version in ``versions``.
"""

from fastapi import Request
from fastapi.responses import Response

from serve_app import __version__
from serve_app.errors import ModelUnavailable, NotFound
from serve_app.http import JSONWithNaN
from serve_app.protocols import v2
from serve_app.routes.common import ModelRouter

SERVER_NAME = "serve-app"


class V2Routes(ModelRouter):
    """``/v2`` server and model endpoints."""

    async def v2_server_metadata(self) -> Response:
        extensions = ["binary_tensor_data", "statistics"]
        return JSONWithNaN({"name": SERVER_NAME, "version": __version__, "extensions": extensions})

    async def v2_live(self) -> Response:
        return JSONWithNaN({"live": True})

    async def v2_ready(self) -> Response:
        """Ready when every model has a replica that can answer (Triton's strict readiness)."""
        await self.fleet.ready()
        ready = all(self.fleet.available(name) for name in self.fleet.model_names)
        return JSONWithNaN({"ready": ready}, status_code=200 if ready else 503)

    async def v2_model_stats(self, name: str) -> Response:
        """Batching statistics of one replica (Triton's statistics extension shape)."""
        handle = await self.model_handle(name)
        return JSONWithNaN(await self.answer(name, handle.model_stats.remote()))

    async def v2_model_metadata(
        self, name: str, version: int | None, label: str | None = None
    ) -> Response:
        handle = await self.model_handle(name)
        io = await self.answer(name, handle.model_io.remote(version, label))
        return JSONWithNaN(v2.model_metadata(name, io["versions"], io["platform"], io))

    async def v2_model_ready(
        self, name: str, version: int | None, label: str | None = None
    ) -> Response:
        try:
            handle = await self.model_handle(name)
            await self.answer(name, handle.model_io.remote(version, label))
        except ModelUnavailable:
            return JSONWithNaN({"name": name, "ready": False}, status_code=503)
        return JSONWithNaN({"name": name, "ready": True})

    async def v2_infer(
        self, name: str, version: int | None, request: Request, label: str | None = None
    ) -> Response:
        handle = await self.model_handle(name)
        body = await self.body_bytes(request)
        infer = v2.decode_infer(body, request.headers.get(v2.HEADER_LENGTH.lower()))
        self.check_rows(infer.request)
        infer.request.version = version
        infer.request.label = label
        call = handle.predict_versioned.remote(infer.request)
        served, outputs = await self.answer(name, call)
        content, header_length = v2.encode_infer(name, served, infer, outputs)
        if header_length is None:
            return Response(content, media_type="application/json")
        return Response(
            content,
            media_type="application/octet-stream",
            headers={v2.HEADER_LENGTH: str(header_length)},
        )


def parse_version(text: str) -> int:
    """A version path segment as an int; 404 if it is not one."""
    if not text.isdigit():
        raise NotFound(f"version must be a non-negative integer, got '{text}'")
    return int(text)
