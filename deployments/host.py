"""One model inside a replica: its versions, loaded in the background, and its requests.

A dedicated deployment holds one ``ModelHost``; a pool replica holds one per model it has
loaded. The host keeps the wanted versions current while serving: a new version (from
polling the repository or from a ``user_config`` change) loads beside the serving one, is
warmed up, then takes over; the old one is released once its in-flight requests finish.
Requests are prepared here and handed, as ``BatchItem``s, to the replica's batcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Executor
from typing import Any

import numpy as np

from deployments.batching import (
    BatchItem,
    BatchStats,
    concat_inputs,
    concat_outputs,
    group_compatible,
    parameters_key,
    slice_rows,
    split_outputs,
)
from deployments.servable import Servable
from deployments.signature import prepare_inputs, requested_outputs, squeeze_outputs
from deployments.versions import AVAILABLE, END, LOADING, UNLOADING, ModelVersion, VersionTable
from serve_app import metrics
from serve_app.config import HotSettings, ModelSpec, StoreSpec
from serve_app.errors import ModelLoadError, ServingError
from serve_app.request import PREDICT, PredictRequest
from serve_app.store import open_store, select_versions, store_notice

logger = logging.getLogger("ray.serve")

Submit = Callable[[BatchItem], Awaitable[dict[str, np.ndarray]]]


class ModelHost:
    """One model's versions in one replica, and the calls that read or use them."""

    def __init__(
        self,
        spec: ModelSpec,
        store_settings: StoreSpec,
        hot: HotSettings,
        servable_class: type[Servable],
        executor: Executor,
        submit: Submit,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.hot = hot
        self.stats = BatchStats()
        self.table = VersionTable(self.name)
        self.load_seconds = 0.0
        self._servable_class = servable_class
        # The replica's inference thread: servables run their model calls there.
        self._executor = executor
        self._submit = submit
        self._store = open_store(spec.uri, store_settings)
        self._wake: asyncio.Event | None = None
        self._maintainer: asyncio.Task | None = None

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
            errors = "; ".join(mv.error for mv in self.table.versions.values() if mv.error)
            raise ModelLoadError(errors)
        self.load_seconds = time.monotonic() - started

    def _load(self, number: int) -> None:
        """Fetch, load and warm up one version (blocking); record how it went."""
        previous = self.table.versions.get(number)
        attempts = previous.attempts + 1 if previous is not None and previous.error else 1
        version = ModelVersion(number, LOADING, attempts=attempts)
        self.table.versions[number] = version
        started = time.monotonic()
        try:
            path = self._store.fetch(number)
            if self._store.last_fetch_cached is not None:
                metrics.record_cache_fetch(self.name, self._store.last_fetch_cached)
            version.notice = store_notice(self._store)
            servable = self._servable_class(self.spec, path, self._executor)
            servable.warm_up()
        except Exception as exc:  # any failure leaves the serving versions as they are
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
        """Stop maintaining the model and unload every version (after its requests finish)."""
        if self._maintainer is not None:
            self._maintainer.cancel()
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
        wanted = self._wanted(available)
        for number in self.table.to_load(wanted, time.monotonic()):
            await asyncio.to_thread(self._load, number)
        for number in self.table.to_unload(wanted):
            await self._unload(number)

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
        if self._maintainer is None or self._maintainer.done():
            self._wake = asyncio.Event()
            self._maintainer = asyncio.get_running_loop().create_task(self._maintain())
        assert self._wake is not None
        if hot.version_policy != previous.version_policy:
            self.table.forget_failures()
        if hot.version_policy != previous.version_policy or hot.poll_interval_s:
            self._wake.set()

    def check_health(self) -> None:
        """Healthy while some version can answer."""
        if not self.table.available():
            raise RuntimeError(f"model '{self.name}' has no available version")

    # --- requests ------------------------------------------------------------------------

    @contextlib.contextmanager
    def using(self, request: PredictRequest) -> Iterator[ModelVersion]:
        """The version a request names (or the default), kept from unloading meanwhile."""
        wanted = self._wanted(list(self.table.versions))
        version = self.table.resolve(request.version, request.label, self.hot.labels, wanted)
        version.in_flight += 1
        try:
            yield version
        finally:
            version.in_flight -= 1

    async def predict_versioned(self, request: PredictRequest) -> tuple[int, dict[str, np.ndarray]]:
        """Validate one request, batch its rows with other requests' and return its outputs,
        with the version that answered (protocols that report it)."""
        with self.using(request) as version:
            servable = version.servable
            signature = servable.signature(request.signature_name)
            raw = request.inputs
            if request.method != PREDICT:
                raw = servable.example_inputs(signature, request.method, request.examples or [])
            prepared = prepare_inputs(signature, raw, request.exact_dtypes)
            servable.check_request(prepared.tensors, request.parameters)
            wanted = requested_outputs(signature, request.outputs)
            # A request larger than one batch is cut into batch-sized chunks.
            limit, rows = self.hot.batching.max_batch_size, prepared.rows
            # Only items of this host and version share a model call.
            group = f"{id(self)}:{version.number}:{parameters_key(request.parameters)}"
            chunks = [
                BatchItem(
                    signature.name,
                    slice_rows(prepared.tensors, start, min(start + limit, rows)),
                    min(limit, rows - start),
                    request.parameters,
                    group,
                    version.number,
                    self,
                )
                for start in range(0, rows, limit)
            ]
            outputs = concat_outputs(list(await asyncio.gather(*map(self._submit, chunks))))
        outputs = {name: outputs[name] for name in wanted}
        # TF Serving answers a scalar-per-instance request with scalars per instance.
        return version.number, squeeze_outputs(outputs) if prepared.expanded else outputs

    async def generate_stream(
        self, text: str, max_new_tokens: int, parameters: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream one completion from the default version (text-generation models)."""
        with self.using(PredictRequest({})) as version:
            stream = getattr(version.servable, "generate_stream", None)
            if stream is None:
                raise ServingError(f"model '{self.name}' cannot stream")
            async for item in stream(text, max_new_tokens, parameters):
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

    def stats_json(self) -> dict[str, Any]:
        """Batching statistics in the shape of one entry of Triton's ``model_stats``."""
        serving = self.table.default(self._wanted(list(self.table.versions)))
        return {"name": self.name, "version": str(serving.number), **self.stats.to_json()}


async def run_batch(
    items: list[BatchItem], executor: Executor, replica: str
) -> list[dict[str, np.ndarray] | Exception]:
    """Run one dynamic batch: each group of compatible items (one model, one version, equal
    parameters) is one model call on the inference thread. A failing call answers its own
    items with the error, nothing else."""
    results: list[Any] = [None] * len(items)
    loop = asyncio.get_running_loop()
    for group in group_compatible(items):
        members = [items[i] for i in group]
        host: ModelHost = members[0].host
        # In-flight requests keep their version loaded until they are answered.
        servable = host.table.versions[members[0].version].servable
        call = functools.partial(
            servable.infer, members[0].signature, concat_inputs(members), members[0].parameters
        )
        try:
            outputs = await loop.run_in_executor(executor, call)
        except ServingError as exc:
            outputs = exc
        except Exception as exc:
            logger.exception("%s: model '%s' failed on a batch", replica, host.name)
            outputs = ServingError(f"model '{host.name}' failed: {type(exc).__name__}: {exc}")
        if isinstance(outputs, Exception):
            for i in group:
                results[i] = outputs
            continue
        rows = sum(m.rows for m in members)
        host.stats.record(rows)
        metrics.record_batch(host.name, rows, len(members))
        for i, part in zip(group, split_outputs(outputs, [m.rows for m in members])):
            results[i] = part
    return results
