"""The model deployment: versions loaded in the background, requests batched per version.

Each framework provides a ``Servable`` (one loaded version, ``deployments/servable.py``);
this class is the Serve deployment around it. It loads the wanted versions when the replica
starts, then keeps them current while serving: a new version (from polling the repository
or from a ``user_config`` change) loads beside the serving one, is warmed up, then takes
over; the old one is released once its in-flight requests finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import numpy as np
from ray import serve

from deployments.batching import (
    BatchItem,
    BatchStats,
    concat_inputs,
    concat_outputs,
    count_rows,
    group_compatible,
    parameters_key,
    slice_rows,
    split_outputs,
)
from deployments.servable import Servable
from deployments.signature import prepare_inputs, requested_outputs, squeeze_outputs
from deployments.versions import AVAILABLE, END, LOADING, UNLOADING, ModelVersion, VersionTable
from serve_app import metrics
from serve_app.config import ModelSpec, StoreSpec, parse_hot_settings
from serve_app.errors import ModelLoadError, ServingError
from serve_app.request import PREDICT, PredictRequest
from serve_app.store import open_store, select_versions, store_notice

logger = logging.getLogger("ray.serve")


class ModelDeployment:
    """One model in one replica: its versions, dynamic batching, status and metadata."""

    servable_class: ClassVar[type[Servable]]

    def __init__(self, load_settings: dict[str, Any], hot_settings: dict[str, Any]) -> None:
        settings = dict(load_settings)
        # The app-level store settings travel with each model's load settings.
        self.store_settings = StoreSpec.model_validate(settings.pop("store", None) or {})
        self.spec = ModelSpec.model_validate(settings)
        self.name = self.spec.name
        self._base_hot = hot_settings
        self.hot = parse_hot_settings(hot_settings, self.name)
        self.stats = BatchStats()
        self.table = VersionTable(self.name)
        # One thread: model calls run off the event loop, one batch at a time.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-infer")
        self._store = open_store(self.spec.uri, self.store_settings)
        self._wake: asyncio.Event | None = None
        self._maintainer: asyncio.Task | None = None
        started = time.monotonic()
        self._initial_load()
        self.load_seconds = time.monotonic() - started

    # --- loading and unloading ---------------------------------------------------------

    def _wanted(self, available: list[int]) -> list[int]:
        """The versions the policy wants among ``available``."""
        return select_versions(available, self.hot.version_policy)

    def _initial_load(self) -> None:
        """Load the wanted versions before the replica takes traffic; fail if none loads."""
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
            servable = self.servable_class(self.spec, path, self._executor)
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
        await asyncio.to_thread(servable.release)
        self._store.release(number)
        version.state = END
        metrics.record_versions(self.name, len(self.table.available()))
        logger.info("model '%s' version %d unloaded", self.name, number)

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

    def _ensure_maintainer(self) -> None:
        if self._maintainer is None or self._maintainer.done():
            self._wake = asyncio.Event()
            self._maintainer = asyncio.get_running_loop().create_task(self._maintain())

    # --- Serve hooks ---------------------------------------------------------------------

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply hot settings at once; version changes load in the background, never here
        (Serve takes the replica out of rotation while this runs)."""
        previous = self.hot
        self.hot = parse_hot_settings(user_config, self.name, self._base_hot)
        self._run_batch.set_max_batch_size(self.hot.batching.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(self.hot.batching.batch_wait_timeout_s)
        self._ensure_maintainer()
        assert self._wake is not None
        if self.hot.version_policy != previous.version_policy:
            self.table.forget_failures()
        if self.hot.version_policy != previous.version_policy or self.hot.poll_interval_s:
            self._wake.set()

    def check_health(self) -> None:
        """Healthy while some version can answer."""
        if not self.table.available():
            raise RuntimeError(f"model '{self.name}' has no available version")

    # --- requests ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _using(self, request: PredictRequest) -> Iterator[ModelVersion]:
        """The version a request names (or the default), kept from unloading meanwhile."""
        wanted = self._wanted(list(self.table.versions))
        version = self.table.resolve(request.version, request.label, self.hot.labels, wanted)
        version.in_flight += 1
        try:
            yield version
        finally:
            version.in_flight -= 1

    async def predict(self, request: PredictRequest) -> dict[str, np.ndarray]:
        """Validate one request, batch its rows with other requests', return its outputs."""
        return (await self.predict_versioned(request))[1]

    async def predict_versioned(self, request: PredictRequest) -> tuple[int, dict[str, np.ndarray]]:
        """``predict``, and the version that answered (protocols that report it)."""
        with self._using(request) as version:
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
            group = f"{version.number}:{parameters_key(request.parameters)}"
            chunks = [
                BatchItem(
                    signature.name,
                    slice_rows(prepared.tensors, start, min(start + limit, rows)),
                    min(limit, rows - start),
                    request.parameters,
                    group,
                    version.number,
                )
                for start in range(0, rows, limit)
            ]
            outputs = concat_outputs(list(await asyncio.gather(*map(self._submit, chunks))))
        outputs = {name: outputs[name] for name in wanted}
        # TF Serving answers a scalar-per-instance request with scalars per instance.
        return version.number, squeeze_outputs(outputs) if prepared.expanded else outputs

    async def _submit(self, item: BatchItem) -> dict[str, np.ndarray]:
        result = await self._run_batch(item)
        if isinstance(result, Exception):
            raise result
        return result

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005, batch_size_fn=count_rows)
    async def _run_batch(self, items: list[BatchItem]) -> list[dict[str, np.ndarray]]:
        results: list[Any] = [None] * len(items)
        loop = asyncio.get_running_loop()
        for group in group_compatible(items):
            members = [items[i] for i in group]
            # In-flight requests keep their version loaded until they are answered.
            servable = self.table.versions[members[0].version].servable
            call = functools.partial(
                servable.infer, members[0].signature, concat_inputs(members), members[0].parameters
            )
            try:
                outputs = await loop.run_in_executor(self._executor, call)
            except ServingError as exc:
                outputs = exc
            except Exception as exc:  # a failing batch answers its own requests, nothing else
                logger.exception("model '%s' failed on a batch", self.name)
                outputs = ServingError(f"model '{self.name}' failed: {type(exc).__name__}: {exc}")
            if isinstance(outputs, Exception):
                for i in group:
                    results[i] = outputs
                continue
            self.stats.record(sum(m.rows for m in members))
            metrics.record_batch(self.name, sum(m.rows for m in members), len(members))
            for i, part in zip(group, split_outputs(outputs, [m.rows for m in members])):
                results[i] = part
        return results  # an exception here is raised to its own caller by _submit

    async def generate_stream(
        self, text: str, max_new_tokens: int, parameters: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream one completion from the default version (text-generation models)."""
        with self._using(PredictRequest({})) as version:
            stream = getattr(version.servable, "generate_stream", None)
            if stream is None:
                raise ServingError(f"model '{self.name}' cannot stream")
            async for item in stream(text, max_new_tokens, parameters):
                yield item

    # --- status, metadata, statistics ---------------------------------------------------

    async def model_status(
        self, version: int | None = None, label: str | None = None
    ) -> list[dict[str, Any]]:
        """TF Serving's ``model_version_status``: every version this replica knows."""
        if label is not None:
            with self._using(PredictRequest({}, label=label)) as chosen:
                version = chosen.number
        return self.table.statuses(version)

    async def model_metadata(
        self, version: int | None = None, label: str | None = None
    ) -> dict[str, Any]:
        """TF Serving's metadata response body."""
        with self._using(PredictRequest({}, version=version, label=label)) as chosen:
            return {
                "model_spec": {
                    "name": self.name,
                    "signature_name": "",
                    "version": str(chosen.number),
                },
                "metadata": {"signature_def": {"signature_def": chosen.servable.signature_defs()}},
            }

    async def model_io(
        self, version: int | None = None, label: str | None = None
    ) -> dict[str, Any]:
        """Platform, available versions and the default signature's public inputs/outputs."""
        with self._using(PredictRequest({}, version=version, label=label)) as chosen:
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

    async def model_stats(self) -> dict[str, Any]:
        """Batching statistics of this replica (Triton's statistics extension shape), and
        where it runs: node, GPU share, CUDA_VISIBLE_DEVICES, device and dtype."""
        from deployments.devices import placement_report

        serving = self.table.default(self._wanted(list(self.table.versions)))
        return {
            "model_stats": [
                {"name": self.name, "version": str(serving.number), **self.stats.to_json()}
            ],
            "batching": self.hot.batching.model_dump(),
            "load_seconds": round(self.load_seconds, 3),
            "versions": self.table.statuses(),
            "replica": {
                "id": serve.get_replica_context().replica_id.unique_id,
                "pid": os.getpid(),
                "rss_bytes": _rss_bytes(),
            },
            "placement": placement_report(),
        }


def _rss_bytes() -> int:
    """Resident memory of this replica process, from /proc (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
