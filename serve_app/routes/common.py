"""What every protocol's routes share: model lookup, bounded bodies, never-hanging calls."""

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from serve_app.errors import InvalidInput, ModelUnavailable, NotFound, PayloadTooLarge, ServingError
from serve_app.fleet_status import POLL_INTERVAL_S, FleetStatus


class ModelRouter:
    """Holds the model handles; the protocol route classes build on it."""

    handles: dict[str, DeploymentHandle]
    kinds: dict[str, str]  # model name -> "tensorflow" or its transformers task
    fleet: FleetStatus
    max_request_bytes: int

    async def model_handle(self, name: str, kinds: tuple[str, ...] = ()) -> DeploymentHandle:
        """The handle of a model that can answer now: 404 if unknown, 503 if it failed."""
        handle = self.handles.get(name)
        if handle is None or (kinds and self.kinds.get(name) not in kinds):
            known = [n for n in sorted(self.handles) if not kinds or self.kinds[n] in kinds]
            what = f" of kind {'/'.join(kinds)}" if kinds else ""
            raise NotFound(f"model '{name}'{what} not found (known models: {', '.join(known)})")
        await self.fleet.ready()
        self.fleet.check(name)
        return handle

    async def answer(
        self,
        name: str,
        response: DeploymentResponse | Awaitable[Any],
        cancel: Callable[[], None] | None = None,
    ) -> Any:
        """Await a model's answer; give up with 503 if the model fails meanwhile, never hang.

        A call queued for a deployment whose replicas all failed to start would wait forever,
        so the fleet status is re-checked while it waits.
        """
        call = asyncio.ensure_future(_result(response))
        try:
            while True:
                done, _ = await asyncio.wait({call}, timeout=POLL_INTERVAL_S)
                if done:
                    return call.result()
                self.fleet.check(name)
        except ModelUnavailable:
            (cancel or getattr(response, "cancel", lambda: None))()
            call.cancel()
            raise

    async def body_bytes(self, request: Request) -> bytes:
        """The request body, refused with 413 past ``max_request_bytes``."""
        declared = request.headers.get("content-length")
        limit = self.max_request_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(
                f"request body of {declared} bytes exceeds the limit of {limit} bytes"
            )
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        return bytes(body)

    async def json_body(self, request: Request) -> Any:
        """The request body parsed as JSON (NaN and Infinity allowed, as TF Serving does)."""
        body = await self.body_bytes(request)
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"request body is not valid JSON: {exc}") from None


async def _result(response: DeploymentResponse | Awaitable[Any]) -> Any:
    try:
        return await response
    except ServingError:
        raise
    except RayActorError as exc:
        raise ModelUnavailable(f"the model's replica died ({type(exc).__name__})") from None
