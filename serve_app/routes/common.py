"""What every protocol's routes share: model lookup, bounded bodies, never-hanging calls."""

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from serve_app import guard
from serve_app.config import MODEL_NAME_PATTERN
from serve_app.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelUnavailable,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    ServingError,
)
from serve_app.fleet_status import POLL_INTERVAL_S, FleetStatus
from serve_app.pool_catalog import PoolCatalog
from serve_app.request import PredictRequest

_NAME = re.compile(MODEL_NAME_PATTERN.strip("^$"))


# At most this many names are listed in a "not found" error (pools may hold thousands).
KNOWN_NAMES_SHOWN = 20


class ModelRouter:
    """Holds the model handles; the protocol route classes build on it."""

    handles: dict[str, DeploymentHandle]
    kinds: dict[str, str]  # model name -> "tensorflow" or its transformers task
    pools: PoolCatalog
    fleet: FleetStatus

    async def model_handle(self, name: str, kinds: tuple[str, ...] = ()) -> DeploymentHandle:
        """The handle of a model that can answer now: 404 if unknown, 503 if it failed.

        A dedicated model's handle, or for a pool's model a handle that routes by its name
        to the pool replicas holding it.
        """
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            shown = name[:64] if isinstance(name, str) else type(name).__name__
            raise NotFound(f"model '{shown}' not found (model names match {MODEL_NAME_PATTERN})")
        state = guard.current()
        if state is not None:
            state.model = name
        handle, kind = self.handles.get(name), self.kinds.get(name)
        if handle is None:
            found = await self.pools.lookup(name)
            if found is not None:
                handle, kind = found[1], self.pools.kind(name)
        if handle is None or (kinds and kind not in kinds):
            known = [n for n in self.model_names() if not kinds or self.kind_of(n) in kinds]
            shown = ", ".join(known[:KNOWN_NAMES_SHOWN])
            if len(known) > KNOWN_NAMES_SHOWN:
                shown += f" and {len(known) - KNOWN_NAMES_SHOWN} more"
            what = f" of kind {'/'.join(kinds)}" if kinds else ""
            raise NotFound(f"model '{name}'{what} not found (known models: {shown})")
        await self.fleet.ready()
        self.fleet.check(self.deployment_of(name))
        return handle

    def model_names(self) -> list[str]:
        """Every model served now: dedicated ones and those the pools hold."""
        return sorted({*self.handles, *self.pools.names()})

    def kind_of(self, name: str) -> str | None:
        return self.kinds.get(name) or self.pools.kind(name)

    def deployment_of(self, name: str) -> str:
        """The deployment serving a model: its own, or its pool's."""
        return name if name in self.handles else self.pools.owner.get(name, name)

    async def answer(
        self,
        name: str,
        response: DeploymentResponse | Awaitable[Any],
        cancel: Callable[[], None] | None = None,
    ) -> Any:
        """Await a model's answer; give up with 503 if the model fails meanwhile, with 504 past
        the request's deadline, never hang. Either way the call is cancelled.

        A call queued for a deployment whose replicas all failed to start would wait forever,
        so the fleet status is re-checked while it waits.
        """
        state = guard.current()
        deadline = state.deadline if state is not None else None
        call = asyncio.ensure_future(_result(response))
        try:
            while True:
                wait = POLL_INTERVAL_S
                if deadline is not None:
                    wait = max(0.0, min(wait, deadline - time.monotonic()))
                done, _ = await asyncio.wait({call}, timeout=wait)
                if done:
                    return call.result()
                if deadline is not None and time.monotonic() >= deadline:
                    raise DeadlineExceeded(
                        f"model '{name}' did not answer within the request's deadline"
                        " (X-Request-Timeout-Seconds or ingress.request_timeout_s)"
                    )
                self.fleet.check(self.deployment_of(name))
        except BackPressureError as exc:
            overload = guard.settings()
            raise Overloaded(
                f"model '{name}' is overloaded: {exc.message} Retry later.",
                overload.overload_status,
                overload.retry_after_s,
            ) from None
        except (ModelUnavailable, DeadlineExceeded):
            (cancel or getattr(response, "cancel", lambda: None))()
            call.cancel()
            raise

    def check_instances(self, count: int) -> None:
        """413 past ``ingress.max_instances_per_request``, before anything is dispatched."""
        limit = guard.settings().max_instances_per_request
        if count > limit:
            raise PayloadTooLarge(
                f"request has {count} instances; the limit (max_instances_per_request) is {limit}"
            )

    def check_rows(self, request: PredictRequest) -> None:
        """``check_instances`` for a decoded request: its examples or its inputs' rows."""
        if request.examples is not None:
            self.check_instances(len(request.examples))
            return
        rows = [int(a.shape[0]) for a in request.inputs.values() if getattr(a, "ndim", 0) >= 1]
        self.check_instances(max(rows, default=1))

    async def body_bytes(self, request: Request) -> bytes:
        """The request body, refused with 413 past ``ingress.max_request_bytes``."""
        declared = request.headers.get("content-length")
        limit = guard.settings().max_request_bytes
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
