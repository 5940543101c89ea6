"""The data plane: transport-neutral operations on the fleet's models.

Every transport (REST routes, gRPC methods) opens a ``Call`` here (``open_call``: auth,
deadline, body bytes, metrics, access log; ``serve_app/call.py``), looks the model up once
(``lookup``: 404, 503; a ``ServedModel`` that says what the model can do) and calls these
with the call's ``CallContext``, getting Python values or a ``ServingError`` back. Limits
(413), deadlines (504), overload (503/429) and the per-model coalescing of concurrent
inference requests live here, once. Every kind of model call is awaited one way
(``_wait``): until its answer, the deadline (504), or the model found failed meanwhile
(503, ``fail_model``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ray import serve
from ray.serve.exceptions import DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from serve_app import limits
from serve_app.builders import MODEL_BUILDER
from serve_app.call import Call, CallContext
from serve_app.coalesce import Coalescer, OverloadAnswer, call_error
from serve_app.config import (
    ConfigError,
    ModelSpec,
    PoolSpec,
    parse_model_app,
    parse_pool_app,
)
from serve_app.errors import (
    DeadlineExceeded,
    ModelUnavailable,
    NotFound,
    PayloadTooLarge,
    ServingError,
)
from serve_app.fleet_status import FleetStatus, FoundApp
from serve_app.guard import Settings
from serve_app.limits import BodyBudget
from serve_app.model_names import MODEL_NAME, MODEL_NAME_PATTERN
from serve_app.pool_catalog import MISS_REFRESH_S, PoolCatalog, PoolView
from serve_app.replica_api import ReplicaMethod
from serve_app.request import (
    CLASSIFY,
    EMBED,
    GENERATE,
    PREDICT,
    REGRESS,
    STREAM,
    PredictRequest,
)

logger = logging.getLogger("ray.serve")

T = TypeVar("T")
# How long a readiness probe, or the 503 of a failed model, waits for a fresh view of the
# fleet from Serve's controller before it answers from the view in hand.
READY_READ_S = 1.0
FAILURE_READ_S = 1.0
# At most this many names are listed in a "not found" error (pools may hold thousands).
KNOWN_NAMES_SHOWN = 20
# Handle calls carry our own dataclasses and numpy arrays: plain pickle is enough and
# cheaper than cloudpickle (Serve's default).
PICKLE = {"request_serialization": "pickle", "response_serialization": "pickle"}


@dataclass(frozen=True)
class ModelRoute:
    """How the ingress reaches one model, and what it knows of it."""

    kind: str  # shown on the status page: the task, else the framework
    # What the model can do, as its framework declares it (serve_app.request.CAPABILITIES).
    capabilities: frozenset[str] = frozenset({PREDICT})
    # TF Serving REST instances travel undecoded: the model decodes them (Python models).
    json_instances: bool = False
    max_batch_size: int = 32
    max_queued_requests: int | None = None

    def __post_init__(self) -> None:
        # Route settings cross Serve's bind as lists.
        object.__setattr__(self, "capabilities", frozenset(self.capabilities))

    @classmethod
    def of(cls, spec: ModelSpec | PoolSpec) -> ModelRoute:
        return cls(
            spec.kind,
            spec.capabilities,
            spec.json_instances,
            spec.batching.max_batch_size,
            spec.max_queued_requests,
        )


# What the ingress knows of a model it has no route for (a pool's model whose pool's route
# is gone): nothing it can do but be asked.
UNKNOWN_ROUTE = ModelRoute("other", frozenset())


@dataclass(frozen=True)
class ServedModel:
    """A model as one request finds it (``DataPlane.lookup``): its name, the handle that
    reaches it, what it can do, and the deployment that serves it."""

    name: str
    handle: DeploymentHandle
    route: ModelRoute
    deployment: str

    def can(self, need: str | None) -> bool:
        """Whether the model has the capability ``need`` (None: any model)."""
        return need is None or need in self.route.capabilities


# The kinds of model that can do a capability, for the 404 of a model that cannot.
NEEDS = {
    EMBED: ("feature-extraction",),
    GENERATE: ("text-generation",),
    STREAM: ("text-generation",),
    CLASSIFY: ("tensorflow",),
    REGRESS: ("tensorflow",),
}


class DataPlane:
    """The fleet's models, as every transport sees them."""

    def __init__(
        self,
        app_name: str,
        handles: dict[str, DeploymentHandle],
        routes: dict[str, ModelRoute],
        settings: Settings,
        pools: dict[str, PoolView] | None = None,
        pool_routes: dict[str, ModelRoute] | None = None,
    ) -> None:
        self.settings = settings
        self._overload = OverloadAnswer(settings.overload_status, settings.retry_after_s)
        self.handles = {name: handle.options(**PICKLE) for name, handle in handles.items()}
        self.routes = routes
        pools = pools or {}
        for view in pools.values():
            view.handle = view.handle.options(**PICKLE)
        self.pool_routes = pool_routes or {}
        self.pools = PoolCatalog(pools, set(handles))
        # Models and pools of the ingress's own application (build_app's args); the others
        # are the model and pool applications found beside it (sync_apps).
        self._static = {*handles, *pools}
        self.fleet = FleetStatus(
            app_name, [*handles, *pools], self._stuck_models, self.fail_model, self.sync_apps
        )
        self._coalescers: dict[str, Coalescer] = {}
        self._discovered: dict[str, DeploymentHandle] = {}
        # Request bodies held by this ingress replica, whichever transport read them.
        self.bodies = BodyBudget(settings.max_buffered_bytes, settings.retry_after_s)
        # Model calls other than coalesced inference awaited now, per deployment: the fleet
        # watcher looks at a model that keeps them waiting, and fails them if it failed.
        self._awaited: dict[str, dict[asyncio.Future, float]] = {}

    # --- calls -----------------------------------------------------------------------------

    def open_call(self, what: str, request_id: str) -> Call:
        """A call's scope (``serve_app/call.py``); the transport closes it when answered."""
        return Call(self.settings, self.bodies, what, request_id)

    # --- lookup ----------------------------------------------------------------------------

    async def lookup(self, ctx: CallContext, name: str, need: str | None = None) -> ServedModel:
        """A model that can answer now: 404 if unknown (or if it cannot do ``need``, a
        capability), 503 if it failed.

        Its handle is a dedicated model's, or for a pool's model one that routes by its name
        to the pool replicas holding it.
        """
        if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
            shown = name[:64] if isinstance(name, str) else type(name).__name__
            raise NotFound(f"model '{shown}' not found (model names match {MODEL_NAME_PATTERN})")
        # Serve's view, waited for within the deadline only: its controller can be slow.
        viewed = await self.fleet.ready(ctx.remaining_s())
        handle = await self._find(name)
        if handle is None:  # deployed a moment ago? Serve's view is read again, at most 1/s
            viewed = await self.fleet.refresh(MISS_REFRESH_S, ctx.remaining_s())
            handle = await self._find(name)
        if handle is None and not viewed:  # maybe deployed: 404 would be a guess
            raise DeadlineExceeded.reading_fleet(name)
        if handle is None or not self.can(name, need):
            known = [n for n in self.model_names() if self.can(n, need)]
            shown = ", ".join(known[:KNOWN_NAMES_SHOWN])
            if len(known) > KNOWN_NAMES_SHOWN:
                shown += f" and {len(known) - KNOWN_NAMES_SHOWN} more"
            if handle is not None:  # served, but it cannot do this
                route = self.route_of(name)
                kind = route.kind if route is not None else "other"
                needed = "/".join(NEEDS.get(need, (str(need),)))
                raise NotFound(
                    f"model '{name}' that can {need} not found: it is a {kind} model, {need}"
                    f" needs a {needed} model (models that can: {shown or 'none'})"
                )
            what = f" that can {need}" if need else ""
            raise NotFound(f"model '{name}'{what} not found (known models: {shown})")
        # Served names only: a metric label per invented name would grow without bound.
        ctx.model = name
        deployment = self.deployment_of(name)
        self.fleet.check(deployment)
        return ServedModel(name, handle, self.route_of(name) or UNKNOWN_ROUTE, deployment)

    async def _find(self, name: str) -> DeploymentHandle | None:
        handle = self.handles.get(name)
        if handle is not None:
            return handle
        found = await self.pools.lookup(name)
        return found[1] if found is not None else None

    # --- the applications beside the ingress -----------------------------------------------

    def sync_apps(self, apps: dict[str, FoundApp]) -> None:
        """Serve the model and pool applications deployed now: new ones from now on,
        changed ones with their new settings, removed ones no more."""
        for name in [n for n in self._discovered if n not in apps]:
            self._forget(name)
        for name, app in apps.items():
            if name in self._static:
                logger.warning(
                    "application '%s' is not served: the ingress's own application has a"
                    " model or pool of that name",
                    name,
                )
                continue
            try:
                spec = (parse_model_app if app.builder == MODEL_BUILDER else parse_pool_app)(
                    app.args
                )
            except ConfigError as exc:  # Serve reports the same error for that application
                logger.warning("application '%s' is not served: %s", name, exc)
                self._forget(name)
                continue
            if spec.name != name:
                logger.warning(
                    "application '%s' is not served: it holds '%s'; name each model's"
                    " application after the model",
                    name,
                    spec.name,
                )
                self._forget(name)
                continue
            self._serve_app(name, app.builder, spec)
        self.pools.dedicated = set(self.handles)

    def _serve_app(self, name: str, builder: str, spec: ModelSpec | PoolSpec) -> None:
        handle = self._discovered.get(name)
        if handle is None:
            handle = serve.get_deployment_handle(name, name, _check_exists=False)
            handle = handle.options(**PICKLE)
            self._discovered[name] = handle
        route = ModelRoute.of(spec)
        if builder == MODEL_BUILDER:
            self.handles[name], self.routes[name] = handle, route
        else:
            pool = self.pools.pools.get(name)
            if pool is None:
                self.pools.pools[name] = PoolView(handle, spec.kind, spec.discovery_interval_s)
            else:
                pool.kind, pool.discovery_interval_s = spec.kind, spec.discovery_interval_s
            self.pool_routes[name] = route
        for model, coalescer in self._coalescers.items():
            if self.deployment_of(model) == name:
                coalescer.max_rows_per_call = route.max_batch_size
                coalescer.max_queued = route.max_queued_requests

    def _forget(self, name: str) -> None:
        """Stop serving an application that was removed (or is no longer valid)."""
        if self._discovered.pop(name, None) is None:
            return
        self.handles.pop(name, None)
        self.routes.pop(name, None)
        self.pool_routes.pop(name, None)
        self.pools.pools.pop(name, None)
        self.pools.rebuild()
        gone = NotFound(f"model '{name}' is no longer served (its application was removed)")
        for model in [m for m in self._coalescers if self.deployment_of(m) == name]:
            self._coalescers.pop(model).fail(gone)

    def model_names(self) -> list[str]:
        """Every model served now: dedicated ones and those the pools hold."""
        return sorted({*self.handles, *self.pools.names()})

    def kind_of(self, name: str) -> str | None:
        route = self.routes.get(name)
        return route.kind if route is not None else self.pools.kind(name)

    def route_of(self, name: str) -> ModelRoute | None:
        """What the ingress knows of a served model (its own route, or its pool's)."""
        return self.routes.get(name) or self.pool_routes.get(self.pools.owner.get(name, ""))

    def can(self, name: str, need: str | None) -> bool:
        """Whether a served model has the capability ``need`` (None: any model)."""
        route = self.route_of(name)
        return need is None or (route is not None and need in route.capabilities)

    def deployment_of(self, name: str) -> str:
        """The deployment serving a model: its own, or its pool's."""
        return name if name in self.handles else self.pools.owner.get(name, name)

    async def model_names_that_can(self, *needs: str) -> list[str]:
        """Models with any of these capabilities, the pools re-listed if their listing is
        old."""
        await self.pools.refresh(max_age=MISS_REFRESH_S)
        return [n for n in self.model_names() if any(self.can(n, need) for need in needs)]

    # --- limits ----------------------------------------------------------------------------

    def check_instances(self, count: int) -> None:
        """413 past ``ingress.max_instances_per_request``, before anything is dispatched."""
        limit = self.settings.max_instances_per_request
        if count > limit:
            raise PayloadTooLarge(
                f"request has {count} instances; the limit (max_instances_per_request) is {limit}"
            )

    def check_rows(self, request: PredictRequest) -> int:
        """``check_instances`` for a decoded request: its examples or its inputs' rows."""
        if request.examples is not None:
            rows = len(request.examples)
        else:
            shapes = [getattr(a, "shape", ()) for a in request.inputs.values()]
            rows = max((int(s[0]) for s in shapes if len(s) >= 1), default=1)
        self.check_instances(rows)
        return rows

    # --- deadlines -------------------------------------------------------------------------

    def check_deadline(self, ctx: CallContext) -> None:
        """504 for a request whose deadline has passed: nobody waits for its answer, so it
        is neither decoded nor queued."""
        remaining = ctx.remaining_s()
        if remaining is not None and remaining <= 0:
            if ctx.model != "-":
                raise DeadlineExceeded.for_model(ctx.model)
            raise DeadlineExceeded(
                "the request's deadline passed before it was decoded"
                " (X-Request-Timeout-Seconds, the gRPC deadline or ingress.request_timeout_s)"
            )

    async def decode(self, ctx: CallContext, size: int, fn: Callable[..., T], *args: Any) -> T:
        """A request body of ``size`` bytes decoded by ``fn(*args)`` (``limits.decode``), or
        504 first if the request's deadline has passed (a slow upload, a slow lookup)."""
        self.check_deadline(ctx)
        return await limits.decode(size, fn, *args)

    # --- inference (coalesced) -------------------------------------------------------------

    async def infer(
        self, ctx: CallContext, model: ServedModel, request: PredictRequest
    ) -> tuple[int, dict[str, Any]]:
        """One inference request to a model looked up for it: (the version that answered,
        its outputs)."""
        name = model.name
        rows = self.check_rows(request)
        self.check_deadline(ctx)
        if ctx.deadline is not None:
            request.deadline = time.time() + (ctx.deadline - time.monotonic())
        size = tensor_bytes(request)
        self.hold_decoded(size)
        try:
            # A generation is cancelled alone when its caller leaves (see Coalescer.submit).
            alone = model.can(GENERATE)
            future = self._coalescer(name).submit(request, rows, size, alone)
            answer = await self._wait(ctx, name, future)
        finally:
            self.bodies.give(size)
        if isinstance(answer, ServingError):
            raise answer
        return answer

    def hold_decoded(self, size: int) -> None:
        """Count a decoded request's tensors against the body budget while it is served:
        decoding can multiply a body (a one-character JSON string becomes a 50-byte
        object). 413 if they alone are past ``max_buffered_bytes``, which no wait would cure."""
        if size > self.bodies.limit:
            raise PayloadTooLarge(
                f"the request's decoded tensors take {size} bytes; the ingress holds at most"
                f" {self.bodies.limit} (ingress.max_buffered_bytes): send a smaller request"
            )
        self.bodies.take(size)

    def _coalescer(self, name: str) -> Coalescer:
        coalescer = self._coalescers.get(name)
        if coalescer is None:
            route = self.routes.get(name) or self.pool_routes.get(self.deployment_of(name))
            route = route or ModelRoute("unknown")
            handle = self.handles.get(name)
            deployment = self.deployment_of(name)

            async def call(requests: list[PredictRequest]) -> list[Any]:
                target = handle
                if target is None:  # a pool's model: the catalog's handle for it
                    found = await self.pools.lookup(name)
                    if found is None:
                        raise NotFound(f"model '{name}' is no longer served by any pool")
                    target = found[1]
                response = ReplicaMethod.PREDICT_MANY.of(target).remote(requests)
                try:
                    return await response
                except asyncio.CancelledError:
                    response.cancel()
                    raise
                except DeploymentUnavailableError:  # Serve knew it failed before our view
                    raise await self._deploy_failure(deployment) from None

            coalescer = Coalescer(
                name,
                call,
                max_rows_per_call=route.max_batch_size,
                max_queued=route.max_queued_requests,
                overload=self._overload,
                replicas=lambda: self.fleet.running_replicas(deployment),
            )
            self._coalescers[name] = coalescer
        return coalescer

    async def _wait(self, ctx: CallContext, name: str, future: asyncio.Future) -> Any:
        """The answer for one request, or 504 at its deadline (its future is cancelled, so a
        request not sent yet never leaves)."""
        try:
            if ctx.deadline is None:
                return await future
            return await asyncio.wait_for(future, max(0.0, ctx.deadline - time.monotonic()))
        except TimeoutError:
            raise DeadlineExceeded.for_model(name) from None
        finally:
            if not future.done():
                future.cancel()

    def _stuck_models(self, now: float) -> dict[str, float]:
        """Deployment -> the longest a request for it has waited (the fleet watchdog reads
        Serve's status when a model keeps requests waiting)."""
        stuck: dict[str, float] = {}
        for name, coalescer in self._coalescers.items():
            waited = coalescer.oldest_wait_s(now)
            if waited > 0:
                deployment = self.deployment_of(name)
                stuck[deployment] = max(stuck.get(deployment, 0.0), waited)
        for deployment, awaited in self._awaited.items():
            if awaited:
                waited = now - min(awaited.values())
                stuck[deployment] = max(stuck.get(deployment, 0.0), waited)
        return stuck

    def fail_model(self, deployment: str, error: ModelUnavailable) -> None:
        """Answer everything waiting on a failed deployment with ``error``."""
        for name, coalescer in self._coalescers.items():
            if self.deployment_of(name) == deployment:
                coalescer.fail(error)
        for outcome in self._awaited.get(deployment, {}):
            if not outcome.done():
                outcome.set_exception(error)

    # --- other model calls -----------------------------------------------------------------

    async def call(
        self,
        ctx: CallContext,
        name: str,
        method: ReplicaMethod,
        *args: Any,
        need: str | None = None,
    ) -> Any:
        """One (non-coalesced) call of a model deployment's ``method``: status, metadata,
        statistics."""
        model = await self.lookup(ctx, name, need)
        # ReplicaMethod(): a name that is no replica method fails here, not on the replica.
        response = ReplicaMethod(method).of(model.handle).remote(*args)
        return await self.answer(ctx, name, response, response.cancel)

    async def model_ready(
        self, ctx: CallContext, name: str, version: int | None = None, label: str | None = None
    ) -> bool:
        """Whether a model (version) can answer now: False while it cannot (failed, loading),
        404 if it does not exist."""
        try:
            await self.call(ctx, name, ReplicaMethod.MODEL_IO, version, label)
        except ModelUnavailable:
            return False
        return True

    async def answer(
        self,
        ctx: CallContext,
        name: str,
        response: Awaitable[Any],
        cancel: Callable[[], None] | None = None,
    ) -> Any:
        """Await a model's answer as an inference request's is awaited: 503 if the model is
        found failed meanwhile (the fleet watcher looks at a model that keeps calls waiting),
        504 past the deadline, never a hang. Either way the call is cancelled."""
        deployment = self.deployment_of(name)
        call = asyncio.ensure_future(self._result(name, response))
        outcome = asyncio.get_running_loop().create_future()
        call.add_done_callback(functools.partial(_settle, outcome))
        awaited = self._awaited.setdefault(deployment, {})
        awaited[outcome] = time.monotonic()
        try:
            return await self._wait(ctx, name, outcome)
        except BaseException:
            # A call that ended already is not cancelled: Serve's cancel() of a call that
            # could not be assigned raises that error again (DeploymentUnavailableError).
            if cancel is not None and not call.done():
                cancel()
            call.cancel()
            raise
        finally:
            awaited.pop(outcome, None)
            if not awaited and self._awaited.get(deployment) is awaited:
                del self._awaited[deployment]

    async def stream(
        self, ctx: CallContext, model: ServedModel, *args: Any
    ) -> tuple[Any, AsyncIterator[Any]]:
        """A streaming generation from a model looked up for it: its first item (awaited
        here, so a bad request still gets an error status) and the rest, each within the
        request's deadline. The model stops generating at the deadline or when the stream is
        closed (client gone)."""
        deadline = None if ctx.deadline is None else time.time() + ctx.remaining_s()
        streaming = model.handle.options(stream=True)
        items = ReplicaMethod.GENERATE_STREAM.of(streaming).remote(*args, deadline)
        first = await self.answer(ctx, model.name, items.__anext__(), cancel=items.cancel)
        return first, self._rest_of_stream(ctx, model.name, items)

    async def _rest_of_stream(self, ctx: CallContext, name: str, items: Any) -> AsyncIterator[Any]:
        try:
            while True:
                try:
                    yield await self.answer(ctx, name, items.__anext__(), cancel=items.cancel)
                except StopAsyncIteration:
                    return
        finally:
            items.cancel()  # the client went away, or the stream failed: stop generating

    async def _result(self, name: str, response: Awaitable[Any]) -> Any:
        try:
            return await response
        except DeploymentUnavailableError:  # Serve knew it failed before our view did
            raise await self._deploy_failure(self.deployment_of(name)) from None
        except Exception as exc:
            error = call_error(exc, name, self._overload)
            if error is None or error is exc:
                raise
            raise error from None

    async def _deploy_failure(self, deployment: str) -> ModelUnavailable:
        """The 503 for a deployment Serve reports failed: with the reason Serve recorded
        (a view at most 1 s old: requests to a failed model do not each read the status)."""
        await self.fleet.refresh(max_age=1.0, timeout=FAILURE_READ_S)
        return self.fleet.failure(deployment) or ModelUnavailable(
            f"model '{deployment}' failed to deploy (see its status)"
        )

    # --- readiness -------------------------------------------------------------------------

    async def ready(self, ctx: CallContext | None = None) -> bool:
        """Every model has a replica that can answer (Triton's strict readiness).

        A probe must get its answer in time even while Serve's controller is slow. With no
        view of the fleet yet, the first one is waited for within the request's deadline
        (not ready if it does not come); with a view in hand, a fresher one is waited for at
        most ``READY_READ_S``, and past that the view in hand answers.
        """
        remaining = ctx.remaining_s() if ctx is not None else None
        if remaining is None:
            remaining = self.settings.request_timeout_s
        until = time.monotonic() + remaining
        if not await self.fleet.ready(max(0.0, remaining)):
            return False
        left = min(READY_READ_S, until - time.monotonic())
        await self.fleet.refresh(max_age=1.0, timeout=max(0.0, left))
        return all(self.fleet.available(name) for name in self.fleet.model_names)


def _settle(outcome: asyncio.Future, call: asyncio.Future) -> None:
    """Pass a model call's end on to the future its caller awaits (unless the model was
    found failed first)."""
    if outcome.done():
        if not call.cancelled():
            call.exception()  # retrieved: the caller has its answer already
        return
    if call.cancelled():
        outcome.cancel()
    elif call.exception() is not None:
        outcome.set_exception(call.exception())
    else:
        outcome.set_result(call.result())


def tensor_bytes(request: PredictRequest) -> int:
    """The bytes a request's tensors take in memory. Strings by their own size: an object
    array's ``nbytes`` counts only its pointers, 8 bytes for a string of any length."""
    total = 0
    for array in request.inputs.values():
        total += getattr(array, "nbytes", 0)
        if getattr(array, "dtype", None) is not None and array.dtype.kind == "O":
            # getsizeof: the object's header and its text (bounded by MAX_STRING_ELEMENTS).
            total += sum(map(sys.getsizeof, array.reshape(-1).tolist()))
    return total
