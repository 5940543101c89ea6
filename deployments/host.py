"""One model inside a replica: its versions, loaded in the background, and its requests.

A dedicated deployment holds one ``ModelHost``; a pool replica holds one per model it has
loaded. The host keeps the wanted versions current while serving: a new version (from
polling the repository or from a ``user_config`` change) loads beside the serving one, is
warmed up, then takes over; the old one is released once its in-flight requests finish.
Requests are checked here and handed, as ``BatchItem``s, to the replica's batcher
(``deployments/core.py``), which answers each one on its own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deployments.batching import (
    BatchItem,
    BatchStats,
    concat_outputs,
    parameters_key,
    slice_rows,
)
from deployments.servable import Servable
from deployments.signature import PreparedInputs, prepare_inputs, requested_outputs
from deployments.swap import swap_turn
from deployments.versions import AVAILABLE, END, LOADING, UNLOADING, ModelVersion, VersionTable
from serve_app import metrics
from serve_app.config import RESOURCE, HotSettings, ModelSpec, StoreSpec
from serve_app.errors import InvalidInput, ModelLoadError, ServingError
from serve_app.request import JSON_ROWS, PREDICT, PredictRequest
from serve_app.store import open_store, select_versions, store_notice

logger = logging.getLogger("ray.serve")

Enqueue = Callable[[BatchItem], "asyncio.Future"]
# Requests with more bytes of input (strings by their length) are checked off the event loop.
OFF_LOOP_CHECK_BYTES = 64 * 1024


def input_bytes(inputs: dict[str | None, Any]) -> int:
    """A request's input bytes: numbers by their size, strings by their length (an object
    array's ``nbytes`` counts only its pointers)."""
    total = 0
    for array in inputs.values():
        if getattr(array, "dtype", None) is None:
            continue
        if array.dtype.kind == "O":
            total += sum(len(v) for v in array.reshape(-1).tolist() if isinstance(v, str | bytes))
        else:
            total += array.nbytes
    return total


def _failed(model: str, step: str, exc: Exception) -> ServingError:
    """The 500 of a request whose model code raised: the model, the step, the error type."""
    logger.warning("model '%s': %s failed: %s: %s", model, step, type(exc).__name__, exc)
    return ServingError(f"model '{model}' failed in {step}: {type(exc).__name__}: {exc}")


@dataclass
class VersionStats:
    """Requests one version answered in this replica, and their recent latencies."""

    requests: int = 0
    errors: int = 0
    recent_s: collections.deque = field(default_factory=lambda: collections.deque(maxlen=512))

    def record(self, seconds: float, ok: bool) -> None:
        self.requests += 1
        self.errors += 0 if ok else 1
        self.recent_s.append(seconds)

    def to_json(self) -> dict[str, Any]:
        recent = sorted(self.recent_s)
        p50 = round(1000 * recent[len(recent) // 2], 3) if recent else None
        return {"requests": self.requests, "errors": self.errors, "p50_ms": p50}


@dataclass
class Staged:
    """A request whose model prepares its inputs itself (``Servable.preprocess``), off the
    event loop, before it can be checked and queued; it holds its version meanwhile."""

    version: ModelVersion
    request: PredictRequest
    released: bool = False


@dataclass
class Checked:
    """A request's inputs, cast and checked, ready to be queued."""

    signature: str
    prepared: PreparedInputs
    outputs: list[str]


@dataclass
class Pending:
    """A request that passed its checks, its rows queued for batching as ``futures``."""

    version: ModelVersion
    futures: list[asyncio.Future]
    outputs: list[str]  # the output names to answer with
    prepared: PreparedInputs  # restores the outputs to the shape the request was sent in
    postprocess: bool = False  # the model answers it as JSON rows (``Servable.postprocess``)
    released: bool = False


class ModelHost:
    """One model's versions in one replica, and the calls that read or use them."""

    def __init__(
        self,
        spec: ModelSpec,
        store_settings: StoreSpec,
        hot: HotSettings,
        servable_class: type[Servable],
        executor: Executor,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.hot = hot
        self.stats = BatchStats()
        self.version_stats: dict[int, VersionStats] = {}
        self.table = VersionTable(self.name)
        self.load_seconds = 0.0
        self._servable_class = servable_class
        # The replica's inference thread: servables run their model calls there.
        self._executor = executor
        self._store = open_store(spec.uri, store_settings)
        self._wake: asyncio.Event | None = None
        self._maintainer: asyncio.Task | None = None
        self._loading: asyncio.Future | None = None
        self.closed = False  # unload_all ran: nothing loads or serves any more
        # Set while a resource-preserving swap has no version loaded: requests wait on it.
        self.swap_gap: asyncio.Event | None = None
        self.swaps: collections.deque[dict[str, Any]] = collections.deque(maxlen=10)

    # --- loading and unloading ---------------------------------------------------------

    def _wanted(self, available: list[int]) -> list[int]:
        """The versions the policy wants among ``available``."""
        return select_versions(available, self.hot.version_policy)

    def initial_load(self) -> None:
        """Load the wanted versions before the model takes traffic; fail if none loads."""
        started = time.monotonic()
        available = self._store.list_versions()
        wanted = self._wanted(available)
        if not wanted:
            raise ModelLoadError(
                f"model '{self.name}': no version at {self.spec.uri} matches version_policy"
                f" {self.hot.version_policy.model_dump(exclude_none=True)} (available: {available})"
            )
        for number in wanted:
            self._load(number)
        if not self.table.available():
            self._load_fallback(available, wanted)
        if not self.table.available():
            errors = "; ".join(mv.error for mv in self.table.versions.values() if mv.error)
            raise ModelLoadError(errors)
        self.load_seconds = time.monotonic() - started

    def _load_fallback(self, available: list[int], wanted: list[int]) -> None:
        """Under ``latest: N``, when none of the newest versions loads, the newest older one
        that does serves (a restart must not take down a model that has a good version);
        the failed ones stay in the status with their reasons and are retried as usual.
        Pinned versions (``specific``) are what the user asked for: no fallback."""
        if self.hot.version_policy.latest is None:
            return
        for number in sorted((v for v in available if v not in wanted), reverse=True):
            self._load(number)
            if self.table.versions[number].state == AVAILABLE:
                logger.warning(
                    "model '%s': no wanted version %s loaded; serving version %d meanwhile",
                    self.name,
                    wanted,
                    number,
                )
                return
            del self.table.versions[number]  # an older version that fails is not reported

    def _load(self, number: int) -> None:
        """Fetch, load and warm up one version (blocking); record how it went."""
        previous = self.table.versions.get(number)
        attempts = previous.attempts + 1 if previous is not None and previous.error else 1
        version = ModelVersion(number, LOADING, attempts=attempts)
        self.table.versions[number] = version
        started = time.monotonic()
        fetched = False
        try:
            path = self._store.fetch(number)
            fetched = True
            if self._store.last_fetch_cached is not None:
                metrics.record_cache_fetch(self.name, self._store.last_fetch_cached)
            version.notice = store_notice(self._store)
            servable = self._servable_class(self.spec, path, self._executor)
            servable.apply_batching(self.hot.batching.max_batch_size)  # user_config's, if set
            if servable.warm_up_on_inference_thread:
                self._executor.submit(servable.warm_up).result()
            else:  # here, on the loader thread: the serving versions keep answering
                servable.warm_up()
        except Exception as exc:  # any failure leaves the serving versions as they are
            if fetched:  # a version that will not serve keeps no cache lease, nor its copy:
                self._store.release(number)  # it may be half-uploaded; the retry lists again
                self._store.discard(number)
            reason = str(exc) if isinstance(exc, ServingError) else f"{type(exc).__name__}: {exc}"
            version.error = (
                f"model '{self.name}' version {number} at {self.spec.uri} failed to load: {reason}"
            )
            version.state, version.failed_at = END, time.monotonic()
            logger.error("%s (attempt %d)", version.error, attempts)
            metrics.record_load(self.name, time.monotonic() - started, ok=False)
            return
        version.servable, version.state = servable, AVAILABLE
        metrics.record_load(self.name, time.monotonic() - started, ok=True)
        metrics.record_versions(self.name, len(self.table.available()))
        logger.info(
            "model '%s' version %d loaded and warmed up in %.2fs%s",
            self.name,
            number,
            time.monotonic() - started,
            f" ({version.notice})" if version.notice else "",
        )

    async def _unload(self, number: int) -> None:
        """Stop routing to a version, let its in-flight requests finish, then free it."""
        version = self.table.versions[number]
        version.state = UNLOADING
        while version.in_flight:
            await asyncio.sleep(0.01)
        servable, version.servable = version.servable, None
        if servable is not None:
            await asyncio.to_thread(servable.release)
        self._store.release(number)
        version.state = END
        metrics.record_versions(self.name, len(self.table.available()))
        logger.info("model '%s' version %d unloaded", self.name, number)

    async def unload_all(self) -> None:
        """Stop maintaining the model and unload every version (after its requests finish),
        a version still loading included: once it has loaded, it is unloaded at once."""
        self.closed = True
        if self._maintainer is not None:
            self._maintainer.cancel()
        if self._loading is not None:
            await asyncio.gather(self._loading, return_exceptions=True)
        for number, version in list(self.table.versions.items()):
            if version.state in (AVAILABLE, UNLOADING):
                await self._unload(number)

    async def _reconcile(self) -> None:
        """Bring the loaded versions in line with the repository and the policy."""
        try:
            available = await asyncio.to_thread(self._store.list_versions)
        except Exception as exc:  # the repository may be briefly unreachable: keep serving
            logger.warning("model '%s': cannot list %s: %s", self.name, self.spec.uri, exc)
            return
        for number in [v for v, mv in self.table.versions.items() if v not in available]:
            if self.table.versions[number].state == END:
                del self.table.versions[number]  # gone from the repository: forget it
        for number in self.table.available():  # e.g. "serving from cache" ends with an outage
            self.table.versions[number].notice = store_notice(self._store, number)
        wanted = self._wanted(available)
        to_load = self.table.to_load(wanted, time.monotonic())
        leaving = [v for v in self.table.available() if v not in wanted]
        if to_load and leaving and self.hot.swap_policy == RESOURCE:
            await self._swap_preserving_resources(leaving, to_load)
            return
        await self._load_all(to_load)
        for number in self.table.to_unload(wanted):
            await self._unload(number)

    async def _load_all(self, numbers: list[int]) -> None:
        for number in numbers:
            if self.closed:
                return
            # Kept, so that unload_all can wait for a load a cancelled maintainer started.
            self._loading = asyncio.ensure_future(asyncio.to_thread(self._load, number))
            await asyncio.shield(self._loading)

    async def _swap_preserving_resources(self, leaving: list[int], to_load: list[int]) -> None:
        """TF Serving's resource-preserving policy: free the old version before loading the
        new one (a model that fills its GPU share has no room for two). Requests that arrive
        in the gap wait for the new version, within their deadlines; the model's replicas
        swap one at a time, so the others keep answering meanwhile."""
        async with swap_turn(self.name):
            self.swap_gap = asyncio.Event()
            started = time.monotonic()
            logger.info(
                "model '%s': swapping version(s) %s for %s (swap_policy: resource)",
                self.name,
                leaving,
                to_load,
            )
            try:
                for number in leaving:
                    await self._unload(number)
                await self._load_all(to_load)
                if not self.table.available():
                    # The new version failed: the old one comes back, so the model keeps
                    # its last good version (the failed one is retried later, as usual).
                    logger.warning(
                        "model '%s': version(s) %s failed to load; reloading %s",
                        self.name,
                        to_load,
                        leaving,
                    )
                    await self._load_all(sorted(leaving, reverse=True))
            finally:
                gap, self.swap_gap = self.swap_gap, None
                gap.set()
                self.swaps.append(
                    {
                        "policy": RESOURCE,
                        "unloaded": leaving,
                        "loaded": [v for v in to_load if v in self.table.available()],
                        "failed": [v for v in to_load if v not in self.table.available()],
                        "gap_s": round(time.monotonic() - started, 3),
                    }
                )

    async def _maintain(self) -> None:
        """Reconcile when woken (a config change) or every ``poll_interval_s`` (polling)."""
        assert self._wake is not None
        while True:
            interval = self.hot.poll_interval_s or None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=interval)
            self._wake.clear()
            try:
                await self._reconcile()
            except Exception:  # never let the maintainer die; the next round tries again
                logger.exception("model '%s': version maintenance failed", self.name)

    def apply_hot(self, hot: HotSettings) -> None:
        """Take new hot settings; a changed version policy (or polling) reconciles in the
        background. Call on the replica's event loop."""
        previous, self.hot = self.hot, hot
        for number in self.table.available():
            self.table.versions[number].servable.apply_batching(hot.batching.max_batch_size)
        if self._maintainer is None or self._maintainer.done():
            self._wake = asyncio.Event()
            self._maintainer = asyncio.get_running_loop().create_task(self._maintain())
        assert self._wake is not None
        if hot.version_policy != previous.version_policy:
            self.table.forget_failures()
        if hot.version_policy != previous.version_policy or hot.poll_interval_s:
            self._wake.set()

    def check_health(self) -> None:
        """Healthy while some version can answer, or a resource-preserving swap is in its
        gap (a restart then would load only the new version, which may be broken)."""
        if self.swap_gap is None and not self.table.available():
            raise RuntimeError(f"model '{self.name}' has no available version")

    # --- requests ------------------------------------------------------------------------

    @contextlib.contextmanager
    def using(self, request: PredictRequest, split: bool = False) -> Iterator[ModelVersion]:
        """The version a request names (or the default, or with ``split`` one drawn from
        the ``traffic`` split), kept from unloading meanwhile."""
        wanted = self._wanted(list(self.table.versions))
        traffic = self.hot.traffic if split else None
        version = self.table.resolve(
            request.version, request.label, self.hot.labels, wanted, traffic
        )
        version.in_flight += 1
        try:
            yield version
        finally:
            version.in_flight -= 1

    async def begin(
        self, request: PredictRequest, enqueue: Enqueue, executor: Executor
    ) -> Pending | Staged:
        """Validate one request and queue its rows for batching; ``answer`` answers it.

        Raises the request's own error (400, 404, ...) before anything is queued. A request
        the model prepares itself comes back ``Staged``: ``preprocess`` it, then ``queue``.
        The version it resolves to stays loaded until ``release``. A large request is
        checked on ``executor`` (the inference thread): its checks may tokenize megabytes of
        text, which on the event loop would stall every other call, and Serve's health check.
        """
        wanted = self._wanted(list(self.table.versions))
        version = self.table.resolve(
            request.version, request.label, self.hot.labels, wanted, self.hot.traffic
        )
        version.in_flight += 1
        try:
            if version.servable.preprocesses(request):
                return Staged(version, request)
            check = (version, request, request.inputs, request.exact_dtypes)
            if input_bytes(request.inputs) <= OFF_LOOP_CHECK_BYTES:
                checked = self._check(*check)
            else:
                loop = asyncio.get_running_loop()
                checked = await loop.run_in_executor(executor, self._check, *check)
            return self._enqueue(version, request, checked, enqueue)
        except BaseException:
            version.in_flight -= 1
            raise

    async def preprocess(
        self, staged: list[Staged], executor: Executor
    ) -> list[dict[str | None, np.ndarray] | ServingError]:
        """Each staged request's inputs, prepared by its model in one trip off the event loop;
        a request whose preparation fails gets its own error (the others go on)."""

        def run() -> list[dict[str | None, np.ndarray] | ServingError]:
            return [
                self._guarded("preprocess", s.version.servable.preprocess, s.request)
                for s in staged
            ]

        return await asyncio.get_running_loop().run_in_executor(executor, run)

    def queue(
        self, staged: Staged, raw: dict[str | None, np.ndarray] | ServingError, enqueue: Enqueue
    ) -> Pending | ServingError:
        """Check and queue a staged request with its prepared inputs (or fail it alone)."""
        if isinstance(raw, ServingError):
            self.release(staged)
            return raw
        staged.released = True  # the Pending takes over the version
        try:
            # The model made these inputs: they are cast to its signature, not held to the
            # datatypes the client declared for what it sent.
            checked = self._check(staged.version, staged.request, raw, False)
            return self._enqueue(staged.version, staged.request, checked, enqueue)
        except ServingError as exc:
            staged.version.in_flight -= 1
            return exc
        except Exception as exc:  # the model's inputs broke a check: its request fails alone
            staged.version.in_flight -= 1
            return _failed(self.name, "preprocess", exc)

    @staticmethod
    def _check(
        version: ModelVersion,
        request: PredictRequest,
        raw: dict[str | None, np.ndarray],
        exact: bool,
    ) -> Checked:
        """A request's inputs cast to its signature and checked by the model. Touches no
        state of the host, so it may run off the event loop."""
        servable = version.servable
        signature = servable.signature(request.signature_name)
        if request.method != PREDICT:
            raw = servable.example_inputs(signature, request.method, request.examples or [])
        prepared = prepare_inputs(signature, raw, exact)
        servable.check_request(prepared.tensors, request.parameters)
        return Checked(signature.name, prepared, requested_outputs(signature, request.outputs))

    def _enqueue(
        self, version: ModelVersion, request: PredictRequest, checked: Checked, enqueue: Enqueue
    ) -> Pending:
        futures: list[asyncio.Future] = []
        servable, prepared, outputs = version.servable, checked.prepared, checked.outputs
        try:
            # A request larger than one batch is cut into batch-sized chunks.
            limit, rows = self.hot.batching.max_batch_size, prepared.rows
            # Only items of this host and version share a model call.
            group = f"{id(self)}:{version.number}:{parameters_key(request.parameters)}"
            for start in range(0, rows, limit):
                chunk = (
                    slice_rows(prepared.tensors, start, min(start + limit, rows))
                    if rows > limit
                    else prepared.tensors
                )
                item = BatchItem(
                    checked.signature,
                    chunk,
                    min(limit, rows - start),
                    request.parameters,
                    group,
                    version.number,
                    self,
                    request.deadline,
                )
                future = servable.submit(item)  # a model batching itself takes it
                futures.append(enqueue(item) if future is None else future)
        except BaseException:
            for future in futures:  # chunks queued already are computed for nobody
                future.cancel()
            raise
        return Pending(version, futures, outputs, prepared, servable.postprocesses(request))

    def answer(self, pending: Pending) -> tuple[int, dict[str, Any]] | ServingError:
        """The answer of a begun request whose batch items are all done (the version stays
        held until ``release``)."""
        parts = []
        for future in pending.futures:
            result = future.result()
            if isinstance(result, ServingError):
                return result
            if isinstance(result, Exception):
                return ServingError(f"model '{self.name}' failed: {type(result).__name__}")
            parts.append(result)
        try:
            outputs = concat_outputs(parts)
            outputs = {name: outputs[name] for name in pending.outputs}
            # TF Serving answers a scalar-per-instance request with scalars per instance.
            return pending.version.number, pending.prepared.restore(outputs)
        except Exception as exc:  # this request's outputs only: it fails alone
            logger.warning("model '%s': assembling an answer failed", self.name, exc_info=True)
            return ServingError(f"model '{self.name}' failed: {type(exc).__name__}: {exc}")

    async def postprocess(
        self, answered: list[tuple[Pending, tuple[int, dict[str, Any]]]], executor: Executor
    ) -> list[tuple[int, dict[str, Any]] | ServingError]:
        """The answers of requests the model answers as JSON rows (``JSON_ROWS``), made in
        one trip off the event loop; a request whose rows fail gets its own error."""

        def run() -> list[tuple[int, dict[str, Any]] | ServingError]:
            results: list[tuple[int, dict[str, Any]] | ServingError] = []
            for pending, (number, outputs) in answered:
                rows = self._guarded("postprocess", pending.version.servable.postprocess, outputs)
                results.append(
                    rows if isinstance(rows, ServingError) else (number, {JSON_ROWS: rows})
                )
            return results

        return await asyncio.get_running_loop().run_in_executor(executor, run)

    def _guarded(self, step: str, function: Callable[[Any], Any], value: Any) -> Any:
        """``function(value)``, or the error one request gets for it: its own ServingError,
        400 for a ValueError (bad input, the model's words), else 500 naming the type."""
        try:
            return function(value)
        except ServingError as exc:
            return exc
        except ValueError as exc:
            if step == "preprocess":
                return InvalidInput(f"model '{self.name}' refused the request: {exc}")
            return _failed(self.name, step, exc)
        except Exception as exc:
            return _failed(self.name, step, exc)

    def release(self, pending: Pending | Staged) -> None:
        """Done with a begun request (answered, or its call cancelled): drop its queued rows
        and let its version go."""
        if pending.released:
            return
        pending.released = True
        pending.version.in_flight -= 1
        for future in getattr(pending, "futures", ()):
            future.cancel()

    async def generate_stream(
        self,
        text: str,
        max_new_tokens: int,
        parameters: dict[str, Any],
        deadline: float | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream one completion from the default version (text-generation models)."""
        with self.using(PredictRequest({}), split=True) as version:
            stream = version.servable.generate_stream(text, max_new_tokens, parameters, deadline)
            async for item in stream:
                yield item

    # --- status, metadata, statistics ---------------------------------------------------

    def model_status(self, version: int | None = None, label: str | None = None) -> list[dict]:
        """TF Serving's ``model_version_status``: every version this replica knows."""
        if label is not None:
            with self.using(PredictRequest({}, label=label)) as chosen:
                version = chosen.number
        return self.table.statuses(version)

    def model_metadata(self, version: int | None = None, label: str | None = None) -> dict:
        """TF Serving's metadata response body."""
        with self.using(PredictRequest({}, version=version, label=label)) as chosen:
            return {
                "model_spec": {
                    "name": self.name,
                    "signature_name": "",
                    "version": str(chosen.number),
                },
                "metadata": {"signature_def": {"signature_def": chosen.servable.signature_defs()}},
            }

    def model_io(self, version: int | None = None, label: str | None = None) -> dict[str, Any]:
        """Platform, available versions and the default signature's public inputs/outputs."""
        with self.using(PredictRequest({}, version=version, label=label)) as chosen:
            servable = chosen.servable
            signature = servable.signature("")
            return {
                "platform": servable.platform,
                "versions": self.table.available(),
                "version": chosen.number,
                "inputs": [(s.name, s.dtype.name, s.shape) for s in signature.inputs.values()],
                "outputs": [
                    (s.name, s.dtype.name, s.shape) for s in signature.public_outputs().values()
                ],
            }

    def record_answer(self, version: int, seconds: float, ok: bool) -> None:
        """Count a request one version answered (or failed), for the status and metrics."""
        self.version_stats.setdefault(version, VersionStats()).record(seconds, ok)
        metrics.record_version_request(self.name, version, seconds, ok)

    def versions_report(self) -> dict[str, Any]:
        """Each version's state, labels and traffic weight, and the requests it answered."""
        labels: dict[int, list[str]] = {}
        for label, number in self.hot.labels.items():
            labels.setdefault(number, []).append(label)
        traffic = self.hot.traffic or {}
        return {
            str(number): {
                "state": version.state,
                "error": version.error,
                "labels": sorted(labels.get(number, [])),
                "traffic_weight": traffic.get(number),
                **self.version_stats.get(number, VersionStats()).to_json(),
            }
            for number, version in sorted(self.table.versions.items())
        }

    def stats_json(self) -> dict[str, Any]:
        """Batching statistics in the shape of one entry of Triton's ``model_stats``."""
        serving = self.table.default(self._wanted(list(self.table.versions)))
        return {"name": self.name, "version": str(serving.number), **self.stats.to_json()}
