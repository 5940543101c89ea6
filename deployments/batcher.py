"""Dynamic batching that forms a batch when the model is free, as TF Serving and Triton do.

Serve's ``@serve.batch`` closes a batch ``batch_wait_timeout_s`` after its first request and
queues it for the model even while the previous batch is still running, so under load the
model runs many small batches back to back (batch size ~ arrival rate x wait). Here a batch
is formed only when the previous one has finished: everything that queued meanwhile, up to
``max_batch_size`` rows, goes in one model call. Under load batches fill by themselves; at
low load a request runs at once (``batch_wait_timeout_s`` may then be 0).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

logger = logging.getLogger("ray.serve")

Item = TypeVar("Item")


@dataclass
class _Waiting(Generic[Item]):
    item: Item
    rows: int
    future: asyncio.Future
    arrived: float


class DynamicBatcher(Generic[Item]):
    """Queue items, run them in batches of at most ``max_batch_size`` rows, one batch at a time.

    ``handler`` gets a list of items and returns one result per item; a result that is an
    Exception is raised to that item's caller only.
    """

    def __init__(
        self,
        handler: Callable[[list[Item]], Awaitable[list[Any]]],
        rows_of: Callable[[Item], int],
        max_batch_size: int,
        batch_wait_timeout_s: float,
    ) -> None:
        self._handler = handler
        self._rows_of = rows_of
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self._queue: collections.deque[_Waiting[Item]] = collections.deque()
        self._queued_rows = 0
        self._arrival: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None

    def configure(self, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        """New limits; they apply from the next batch."""
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s

    def enqueue(self, item: Item) -> asyncio.Future:
        """Queue one item; the returned future gets its result (an Exception for an error).

        Call on the event loop. A cancelled future's item is dropped before it runs.
        """
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._arrival = asyncio.Event()
            self._worker = loop.create_task(self._run_forever())
        rows = self._rows_of(item)
        waiting = _Waiting(item, rows, loop.create_future(), time.monotonic())
        self._queue.append(waiting)
        self._queued_rows += rows
        assert self._arrival is not None
        self._arrival.set()
        return waiting.future

    async def submit(self, item: Item) -> Any:
        """Queue one item and wait for its result (raised if it is an Exception)."""
        result = await self.enqueue(item)
        if isinstance(result, Exception):
            raise result
        return result

    async def _run_forever(self) -> None:
        assert self._arrival is not None
        while True:
            while not self._queue:
                self._arrival.clear()
                await self._arrival.wait()
            await self._fill()
            batch = self._take()
            if not batch:
                continue
            try:
                results = await self._handler([waiting.item for waiting in batch])
            except Exception as exc:  # the handler failed as a whole: each caller hears why
                logger.exception("a batch of %d failed", len(batch))
                results = [exc] * len(batch)
            for waiting, result in zip(batch, results):
                if not waiting.future.done():
                    waiting.future.set_result(result)

    async def _fill(self) -> None:
        """Wait (at most ``batch_wait_timeout_s`` after the oldest item arrived) for a full
        batch; with no wait configured, take what is there."""
        assert self._arrival is not None
        while self._queued_rows < self.max_batch_size:
            remaining = self._queue[0].arrived + self.batch_wait_timeout_s - time.monotonic()
            if remaining <= 0:
                return
            self._arrival.clear()
            try:
                await asyncio.wait_for(self._arrival.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Waiting[Item]]:
        """The oldest items that fit in one batch (always at least one); cancelled callers'
        items are dropped."""
        batch: list[_Waiting[Item]] = []
        rows = 0
        while self._queue:
            waiting = self._queue[0]
            if batch and rows + waiting.rows > self.max_batch_size:
                break
            self._queue.popleft()
            self._queued_rows -= waiting.rows
            if waiting.future.done():  # the caller gave up (deadline, disconnect)
                continue
            batch.append(waiting)
            rows += waiting.rows
        return batch
