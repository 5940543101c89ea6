"""The replica core: what every model replica (dedicated or pool) does with requests.

The ingress coalesces concurrent requests for one model into one handle call
(``serve_app/coalesce.py``); here each request of the call is validated on its own, cut into
batch items and queued in the replica's dynamic batcher, and answered on its own: a bad
request gets its error, its call mates their outputs. A model call runs on the replica's
single inference thread; if it fails, its members are retried in halves (halved again where
a half fails) so that only the request that broke it fails, and one bad row in a batch of n
costs about 2 log2(n) + 1 model calls, not n + 1. Members whose callers gave up are not run
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from deployments.batcher import DynamicBatcher
from deployments.batching import BatchItem, concat_inputs, group_compatible, split_outputs
from deployments.host import ModelHost, Pending, Staged
from serve_app import metrics
from serve_app.errors import DeadlineExceeded, ServingError
from serve_app.request import PredictRequest

logger = logging.getLogger("ray.serve")

# What a replica answers for each request of a call: (version, outputs), or the error.
Answer = tuple[int, dict[str, np.ndarray]] | ServingError


class ReplicaCore:
    """The inference thread, the dynamic batcher and the per-request call path of a replica."""

    def __init__(self, name: str, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        self.name = name
        # One thread: model calls run off the event loop, one batch at a time.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-infer")
        # A model's own pre- and post-processing (Python models), off the event loop and off
        # the inference thread, one trip per handle call.
        self.hooks = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-hooks")
        self.batcher: DynamicBatcher[BatchItem] = DynamicBatcher(
            self._run_batch, _rows_of, max_batch_size, batch_wait_timeout_s
        )
        # Handle calls and the requests they carried (coalescing shows as requests > calls).
        self.calls = 0
        self.requests = 0
        self.ongoing = 0  # requests inside this replica now (the autoscaling metric)

    def configure(self, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        """New batching limits; they apply from the next batch."""
        self.batcher.configure(max_batch_size, batch_wait_timeout_s)

    def enqueue(self, item: BatchItem) -> asyncio.Future:
        """Queue one batch item; its future gets the item's outputs or its error."""
        item.future = self.batcher.enqueue(item)
        return item.future

    async def predict_many(self, host: ModelHost, requests: list[PredictRequest]) -> list[Answer]:
        """Answer every request of one handle call, each on its own."""
        self.calls += 1
        self.requests += len(requests)
        self.ongoing += len(requests)
        begun: list[Pending | Staged | ServingError] = []
        started = time.monotonic()
        try:
            if host.swap_gap is not None:  # resource-preserving swap: wait for the new version
                await _wait_for_gap(host.swap_gap, requests)
            now = time.time()
            for request in requests:
                begun.append(await self._begin(host, request, now))
            staged = [i for i, b in enumerate(begun) if isinstance(b, Staged)]
            if staged:  # the model prepares these itself, off the event loop
                raws = await host.preprocess([begun[i] for i in staged], self.hooks)
                for i, raw in zip(staged, raws):
                    begun[i] = host.queue(begun[i], raw, self.enqueue)
            futures = [f for p in begun if isinstance(p, Pending) for f in p.futures]
            if futures:
                await asyncio.wait(futures)
            answers = [p if isinstance(p, ServingError) else host.answer(p) for p in begun]
            post = [
                i
                for i, (p, a) in enumerate(zip(begun, answers))
                if isinstance(p, Pending) and p.postprocess and not isinstance(a, ServingError)
            ]
            if post:  # the model answers these as JSON rows, off the event loop
                rows = await host.postprocess([(begun[i], answers[i]) for i in post], self.hooks)
                for i, answer in zip(post, rows):
                    answers[i] = answer
            elapsed = time.monotonic() - started
            for pending, answer in zip(begun, answers):
                if isinstance(pending, Pending):
                    ok = not isinstance(answer, ServingError)
                    host.record_answer(pending.version.number, elapsed, ok)
            return answers
        finally:
            self.ongoing -= len(requests)
            for pending in begun:  # drop what is still queued (a cancelled call), free versions
                if not isinstance(pending, ServingError):
                    host.release(pending)

    async def _begin(
        self, host: ModelHost, request: PredictRequest, now: float
    ) -> Pending | Staged | ServingError:
        if request.deadline is not None and now >= request.deadline:
            return DeadlineExceeded.for_model(host.name)
        try:
            return await host.begin(request, self.enqueue, self.executor)
        except ServingError as exc:
            return exc
        except Exception as exc:  # a request we could not even check fails alone
            logger.exception("model '%s': preparing a request failed", host.name)
            return ServingError(f"model '{host.name}' failed: {type(exc).__name__}: {exc}")

    async def _run_batch(self, items: list[BatchItem]) -> list[Any]:
        """Run one dynamic batch: each group of compatible items (one model, one version,
        equal parameters) is one model call; a failing call is retried in halves."""
        results: list[Any] = [None] * len(items)
        for group in group_compatible(items):
            await self._run_group(items, group, results)
        return results

    async def _run_group(self, items: list[BatchItem], group: list[int], results: list) -> None:
        """One model call for the items of ``group`` whose callers still wait; where it fails,
        each half of them again (bisection), until the item that breaks the model fails
        alone."""
        now = time.time()
        live = []
        for i in group:
            if items[i].given_up(now):  # its caller's deadline passed, or it went away
                results[i] = DeadlineExceeded.for_model(items[i].host.name)
            else:
                live.append(i)
        if not live:
            return
        outcome = await self._call([items[i] for i in live])
        if not isinstance(outcome, Exception):
            for i, part in zip(live, outcome):
                results[i] = part
        elif len(live) == 1:
            results[live[0]] = outcome
        else:
            middle = len(live) // 2
            await self._run_group(items, live[:middle], results)
            await self._run_group(items, live[middle:], results)

    async def _call(self, members: list[BatchItem]) -> list[dict[str, np.ndarray]] | Exception:
        """One model call for ``members``; their outputs, or the error it raised."""
        host: ModelHost = members[0].host
        # In-flight requests keep their version loaded until they are answered.
        servable = host.table.versions[members[0].version].servable

        def stop() -> bool:  # read on the inference thread by long calls (generation)
            now = time.time()
            return all(m.given_up(now) for m in members)

        call = functools.partial(
            servable.infer,
            members[0].signature,
            concat_inputs(members),
            members[0].parameters,
            stop,
        )
        rows = sum(m.rows for m in members)
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(self.executor, call)
            parts = split_outputs(outputs, [m.rows for m in members])
        except ServingError as exc:
            return exc
        except Exception as exc:
            logger.warning(
                "replica '%s': model '%s' failed on a call of %d item(s): %s: %s",
                self.name,
                host.name,
                len(members),
                type(exc).__name__,
                exc,
            )
            return ServingError(f"model '{host.name}' failed: {type(exc).__name__}: {exc}")
        host.stats.record(rows)
        metrics.record_batch(host.name, rows, len(members))
        return parts

    def report(self) -> dict[str, Any]:
        """How many handle calls carried how many requests (coalescing in the ingress)."""
        return {"calls": self.calls, "requests": self.requests, "ongoing": self.ongoing}


async def _wait_for_gap(gap: asyncio.Event, requests: list[PredictRequest]) -> None:
    """Wait until the swap gap ends, at most until the last of the requests' deadlines."""
    deadlines = [r.deadline for r in requests]
    timeout = None if None in deadlines else max(0.0, max(deadlines) - time.time())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(gap.wait(), timeout)


def _rows_of(item: BatchItem) -> int:
    """A batch counts rows (instances), not requests."""
    return item.rows
