"""Coalescing in the ingress: a model's concurrent requests travel to it in one handle call.

A Ray handle call costs about 0.85 ms of CPU on each side (``bench/NOTES.md``), more than
a small model's own work per request. So requests for one model (one handle: one dedicated
model, or one model of a pool) that arrive while calls to it are in flight wait here and
go together in the next call, which feeds the replica's dynamic batcher with all of them.
At low load a request goes at once, alone; under load each call carries up to one batch.

Results and errors stay per request: the replica answers each request of a call on its
own (``deployments/core.py``). A call that fails as a whole with an error that is not the
model's answer to all of it (a request that cannot be pickled, a bug) is retried in halves,
so that the request that broke it fails alone. A request whose caller gave up (deadline,
disconnect) leaves the queue at once, with its tensors; a call whose requests all gave up is
cancelled. Serve's queue bound now counts calls, so the waiting requests are bounded here
(``max_queued``), counting only callers that still wait.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from serve_app.errors import ModelUnavailable, Overloaded, ServingError
from serve_app.request import PredictRequest

logger = logging.getLogger("ray.serve")

# One handle call: the requests of it -> one answer per request ((version, outputs) or error).
Call = Callable[[list[PredictRequest]], Awaitable[list[Any]]]
# Calls in flight per model replica: one running in the replica's batcher, the next queued
# there, so the model never waits for the ingress.
CALLS_PER_REPLICA = 2
# A call carries at most this many bytes of request tensors (gRPC messages between replicas
# are bounded; one request larger than this still travels, alone).
MAX_CALL_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class OverloadAnswer:
    """What a model past its bound answers: 503 or 429, with ``Retry-After``."""

    status_code: int = 503
    retry_after_s: int | None = 1


def call_error(exc: Exception, model: str, overload: OverloadAnswer) -> ServingError | None:
    """What a client gets for a model call that raised ``exc`` (Serve's and Ray's errors, or
    our own); ``None`` for anything else (a bug)."""
    if isinstance(exc, ServingError):
        return exc
    if isinstance(exc, BackPressureError):
        return Overloaded(
            f"model '{model}' is overloaded: {exc.message} Retry later.",
            overload.status_code,
            overload.retry_after_s,
        )
    if isinstance(exc, RayActorError):
        return ModelUnavailable(f"the model's replica died ({type(exc).__name__})")
    if isinstance(exc, DeploymentUnavailableError):  # Serve knew it failed before our view
        return ModelUnavailable(f"model '{model}' failed to deploy (see its status)")
    return None


@dataclass(eq=False)
class _Waiting:
    request: PredictRequest | None  # None once its caller gave up: its tensors are freed
    future: asyncio.Future
    rows: int
    size: int
    since: float
    queued: bool = True  # still in the queue, its caller waiting
    alone: bool = False  # sent in a handle call of its own (see ``submit``)


@dataclass(eq=False)
class _InFlight:
    """One handle call on its way: cancelled once every request of it has given up."""

    futures: list[asyncio.Future]
    started: float
    task: asyncio.Task | None = None
    done: int = 0

    def on_request_done(self, _: asyncio.Future) -> None:
        self.done += 1
        if self.done == len(self.futures) and self.task is not None and not self.task.done():
            self.task.cancel()


@dataclass
class Coalescer:
    """The waiting requests and the calls in flight of one model handle."""

    model: str
    call: Call
    max_rows_per_call: int = 32
    max_queued: int | None = None
    overload: OverloadAnswer = OverloadAnswer()
    replicas: Callable[[], int] = lambda: 1
    _queue: collections.deque[_Waiting] = field(default_factory=collections.deque)
    _in_flight: set[_InFlight] = field(default_factory=set)
    _departed: int = 0  # entries of _queue whose callers gave up, not removed yet

    def submit(
        self, request: PredictRequest, rows: int, size: int, alone: bool = False
    ) -> asyncio.Future:
        """Queue one request; its future gets the replica's answer for it (an answer or a
        ServingError). Raises ``Overloaded`` past ``max_queued`` waiting requests.

        An ``alone`` request (a generation) gets a handle call of its own: when its caller
        leaves, the call is cancelled and the replica stops generating for it, which it
        cannot do for one member of a shared call. The replica still batches its rows."""
        if self.max_queued is not None and self.waiting >= self.max_queued:
            raise Overloaded(
                f"model '{self.model}' is overloaded: {self.waiting} requests are waiting"
                f" (max_queued_requests {self.max_queued}). Retry later.",
                self.overload.status_code,
                self.overload.retry_after_s,
            )
        future = asyncio.get_running_loop().create_future()
        waiting = _Waiting(request, future, rows, size, time.monotonic(), alone=alone)
        self._queue.append(waiting)
        future.add_done_callback(functools.partial(self._left, waiting))
        self._pump()
        return future

    @property
    def waiting(self) -> int:
        """Requests not sent yet whose callers still wait."""
        return len(self._queue) - self._departed

    def _left(self, waiting: _Waiting, _: asyncio.Future) -> None:
        """A queued request's caller gave up (its future was cancelled): it no longer holds a
        place in the queue nor its tensors."""
        if not waiting.queued:  # sent already, or answered by ``fail``
            return
        waiting.queued = False
        waiting.request = None
        self._departed += 1
        while self._queue and not self._queue[0].queued:
            self._queue.popleft()
            self._departed -= 1
        # Departed entries deeper in the queue go in one pass once they are the most of it,
        # so the cost per departure stays constant.
        if self._departed > 32 and 2 * self._departed > len(self._queue):
            self._queue = collections.deque(w for w in self._queue if w.queued)
            self._departed = 0

    def oldest_wait_s(self, now: float) -> float:
        """How long the longest-waiting request (queued or in a call) has waited."""
        starts = [c.started for c in self._in_flight]
        if self._queue:
            starts.append(self._queue[0].since)
        return now - min(starts) if starts else 0.0

    def fail(self, error: ServingError) -> None:
        """Answer every waiting and in-flight request with ``error`` (the model failed)."""
        for waiting in self._queue:
            waiting.queued = False
            if not waiting.future.done():
                waiting.future.set_result(error)
        self._queue.clear()
        self._departed = 0
        for call in list(self._in_flight):
            for future in call.futures:
                if not future.done():
                    future.set_result(error)

    def _pump(self) -> None:
        """Start calls while there is room and requests wait. Requests sent alone may have
        as many rows in flight as coalesced calls carry (``max_rows_per_call`` calls for each
        call), so that the replica still batches them, one batch queued behind another."""
        calls = CALLS_PER_REPLICA
        if self._queue and self._queue[0].alone:
            calls = CALLS_PER_REPLICA * self.max_rows_per_call
        limit = calls * max(1, self.replicas())
        while self._queue and len(self._in_flight) < limit:
            batch = self._take()
            if not batch:
                return
            call = _InFlight([w.future for w in batch], time.monotonic())
            self._in_flight.add(call)
            for future in call.futures:
                future.add_done_callback(call.on_request_done)
            call.task = asyncio.get_running_loop().create_task(self._run(call, batch))

    def _take(self) -> list[_Waiting]:
        """The oldest waiting requests that fit in one call (at least one); requests whose
        callers gave up are dropped."""
        batch: list[_Waiting] = []
        rows = size = 0
        while self._queue:
            waiting = self._queue[0]
            if batch and (
                rows + waiting.rows > self.max_rows_per_call
                or size + waiting.size > MAX_CALL_BYTES
                or waiting.alone
                or batch[0].alone
            ):
                break
            self._queue.popleft()
            if not waiting.queued:
                self._departed -= 1
                continue
            waiting.queued = False
            if waiting.future.done():  # gave up just now; its callback has not run yet
                continue
            batch.append(waiting)
            rows += waiting.rows
            size += waiting.size
        return batch

    async def _run(self, call: _InFlight, batch: list[_Waiting]) -> None:
        try:
            answers = await self._answers(batch)
        finally:
            self._in_flight.discard(call)
        for waiting, answer in zip(batch, answers):
            if not waiting.future.done():
                waiting.future.set_result(answer)
        self._pump()

    async def _answers(self, batch: list[_Waiting]) -> list[Any]:
        """The call's answers; its failure as every request's answer, or, for a failure that
        may be one request's doing, the answers of its requests retried apart."""
        try:
            answers = await self.call([w.request for w in batch])
            if len(answers) == len(batch):
                return answers
            error: ServingError | None = ServingError(
                f"model '{self.model}' answered {len(answers)} of {len(batch)} requests"
            )
        except asyncio.CancelledError:
            # Every caller gave up (or the ingress is stopping): nobody reads these.
            error = ModelUnavailable(f"the call to model '{self.model}' was cancelled")
        except Exception as exc:
            known = call_error(exc, self.model, self.overload)
            if known is not None:
                error = known
            elif len(batch) == 1:
                logger.exception("a call to model '%s' failed", self.model)
                error = ServingError(f"internal error ({type(exc).__name__})")
            else:
                # Not the model's answer to the whole call (that is a ServingError, or
                # Serve's overload or unavailability): perhaps one request broke it.
                logger.warning(
                    "a call of %d requests to model '%s' failed (%s: %s); retrying them apart",
                    len(batch),
                    self.model,
                    type(exc).__name__,
                    exc,
                )
                error = None
        if error is None:  # outside the except: the retries' errors chain to nothing
            return await self._apart(batch)
        return [error] * len(batch)

    async def _apart(self, batch: list[_Waiting]) -> list[Any]:
        """The answers of ``batch`` in two calls of half of it each, halved again where one
        fails: one request that breaks a call of n costs about 2 log2(n) calls, not n.
        Requests whose callers gave up meanwhile are not sent again."""
        answers: dict[_Waiting, Any] = {}
        middle = len(batch) // 2
        for half in (batch[:middle], batch[middle:]):
            live = [w for w in half if not w.future.done()]
            if live:
                answers.update(zip(live, await self._answers(live)))
        gone = ModelUnavailable(f"the call to model '{self.model}' was cancelled")
        return [answers.get(w, gone) for w in batch]
