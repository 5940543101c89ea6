"""A model pool: many small models sharing one deployment's replicas (model multiplexing).

Every subdirectory of the pool's ``uri`` is a model (with its own versions). The ingress
sends each request with Serve's multiplexed model id set to the model's name, so Serve
routes it to a replica that holds (or is loading) that model. A replica loads models on
demand, each into a ``ModelHost`` of its own, and keeps at most ``max_models_per_replica``,
evicting the least recently used.

Serve's ``@serve.multiplexed`` keeps the LRU list and tells the routers which replica holds
which model, but it loads one model at a time under a single lock (ray-project/ray#65346).
So the function it wraps only *opens* an entry and starts the load on the pool's loader
threads: loads of different models run at once, and requests for loaded models are never
held up by a load. An evicted model stops taking requests at once and is freed once its
in-flight requests are answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray import serve

from deployments.core import ReplicaCore
from deployments.host import ModelHost
from deployments.registry import servable_class
from deployments.versions import RETRY_FAILED_AFTER_S
from serve_app import metrics
from serve_app.config import HotSettings, PoolSpec, StoreSpec
from serve_app.errors import InvalidInput, ModelUnavailable, ServingError
from serve_app.store import list_pool_models

logger = logging.getLogger("ray.serve")


# How often a request re-opens a model that was evicted while the request waited for it.
EVICTED_RETRIES = 2


class EvictedWhileLoading(ModelUnavailable):
    """The model was evicted between its load and the request's turn (503 if it persists)."""


class PoolEntry:
    """One model of the pool in this replica: loading, then serving, until evicted."""

    def __init__(self, replica: PoolModels, model: str) -> None:
        self.model = model
        self._replica = replica
        self._loop = asyncio.get_running_loop()
        self.host: ModelHost | None = None
        self.error: ServingError | None = None
        self.failed_at = 0.0
        self.evicted = False
        self._load: asyncio.Future | None = None

    @property
    def loaded(self) -> bool:
        return self._load is not None and self._load.done() and self.error is None

    def start_load(self) -> None:
        """Load the model on a loader thread; requests for it wait in ``wait``."""
        self.error, self.host = None, self._replica.new_host(self.model)
        self._load = self._loop.create_task(self._replica.load(self))

    async def wait(self) -> ModelHost:
        """The loaded model; its load error if it failed (retried once the failure is old)."""
        assert self._load is not None
        if self.error is not None and time.monotonic() - self.failed_at > RETRY_FAILED_AFTER_S:
            self.start_load()
        await asyncio.shield(self._load)
        if self.error is not None:
            raise self.error
        if self.evicted or self.host is None:
            raise EvictedWhileLoading(
                f"model '{self.model}' was evicted from this replica before it could answer"
                " (more models in use than max_models_per_replica); retry"
            )
        return self.host

    async def close(self) -> None:
        """Unload, once the load (if still running) is over and in-flight requests are done."""
        if self._load is not None:
            await asyncio.gather(self._load, return_exceptions=True)
        if self.host is not None:
            await self.host.unload_all()
            self.host = None

    def __del__(self) -> None:
        # Serve calls this (from a thread) when it evicts the entry, and Python calls it
        # again when the entry is collected: only the first call evicts.
        if getattr(self, "evicted", True):
            return
        self.evicted = True
        # A closed event loop means the replica is shutting down: nothing to free then.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._replica.evict, self)


class PoolModels:
    """The models one pool replica holds: loaded on demand, evicted least recently used
    (the ``ModelHolder`` of a pool's ``deployments.replica.ModelReplica``)."""

    def __init__(
        self, pool: PoolSpec, store: StoreSpec, hot: HotSettings, core: ReplicaCore
    ) -> None:
        self.store_settings = store
        self.pool = pool
        self.name = pool.name
        self.hot = hot
        self._servable_class = servable_class(pool.framework)
        # One inference thread and batcher for every model (the replica's core: items of
        # different models share a batch window but never a model call), and loader threads
        # so that loads never wait for each other.
        self.core = core
        self._loader = ThreadPoolExecutor(
            max_workers=pool.max_concurrent_loads, thread_name_prefix=f"{self.name}-load"
        )
        self.entries: dict[str, PoolEntry] = {}  # models held: loading or loaded
        self._closing: set[asyncio.Task] = set()
        self.counters = {"hits": 0, "misses": 0, "loads": 0, "load_failures": 0, "evictions": 0}
        self.load_seconds: list[float] = []

        async def open_model(model: str) -> PoolEntry:
            return self._open(model)

        # Dynamic, so the limit can come from the pool's config (Serve detects it at runtime).
        self._entry = serve.multiplexed(max_num_models_per_replica=pool.max_models_per_replica)(
            open_model
        )

    # --- models in and out -----------------------------------------------------------------

    def new_host(self, model: str) -> ModelHost:
        return ModelHost(
            self.pool.member_spec(model),
            self.store_settings,
            self.hot,
            self._servable_class,
            self.core.executor,
        )

    def _open(self, model: str) -> PoolEntry:
        """Serve's multiplexed loader: called on a cache miss, under Serve's lock, so it
        only opens the entry; the load runs in the background."""
        entry = PoolEntry(self, model)
        entry.start_load()
        self.entries[model] = entry
        self._record_size()
        return entry

    async def load(self, entry: PoolEntry) -> None:
        """Load one model on a loader thread; never raises (requests get ``entry.error``)."""
        host = entry.host
        assert host is not None
        started = time.monotonic()
        try:
            await asyncio.get_running_loop().run_in_executor(self._loader, host.initial_load)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, ServingError) else f"{type(exc).__name__}: {exc}"
            entry.error = ModelUnavailable(f"model '{entry.model}' could not be loaded: {reason}")
            entry.failed_at = time.monotonic()
            self.counters["load_failures"] += 1
            logger.error("pool '%s': %s", self.name, entry.error)
            return
        seconds = time.monotonic() - started
        self.counters["loads"] += 1
        self.load_seconds = [*self.load_seconds, seconds][-100:]
        metrics.record_pool_load(self.name, seconds)
        if entry.evicted:  # evicted while it loaded: nobody will use it
            return
        host.apply_hot(self.hot)  # starts its version maintenance (polling, policy changes)
        logger.info("pool '%s': model '%s' loaded in %.2fs", self.name, entry.model, seconds)

    def evict(self, entry: PoolEntry) -> None:
        """Serve evicted ``entry`` (least recently used): free it in the background."""
        if self.entries.get(entry.model) is entry:
            del self.entries[entry.model]
        self.counters["evictions"] += 1
        metrics.record_pool_eviction(self.name)
        self._record_size()
        logger.info("pool '%s': model '%s' evicted", self.name, entry.model)
        task = asyncio.get_running_loop().create_task(entry.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _record_size(self) -> None:
        metrics.record_pool_models(self.name, len(self.entries))

    async def host(self) -> ModelHost:
        """The host of the model this request is for (Serve's multiplexed model id)."""
        model = serve.get_multiplexed_model_id()
        if not model:
            raise InvalidInput(f"pool '{self.name}' needs a model name with each request")
        entry: PoolEntry = await self._entry(model)
        hit = entry.loaded
        self.counters["hits" if hit else "misses"] += 1
        metrics.record_pool_request(self.name, hit)
        for _ in range(EVICTED_RETRIES):
            try:
                return await entry.wait()
            except EvictedWhileLoading:
                # Busy replica: other models pushed it out before it was used; open it again.
                entry = await self._entry(model)
        return await entry.wait()

    def apply_hot(self, hot: HotSettings) -> None:
        """Hot settings for every model of the pool (batching, version policy, polling)."""
        self.hot = hot
        for entry in self.entries.values():
            if entry.loaded and entry.host is not None:
                entry.host.apply_hot(hot)

    def check_health(self) -> None:
        """A pool replica is healthy while it runs: a model that fails to load answers 503
        on its own, and the others keep serving."""

    def report(self) -> dict[str, Any]:
        return {"pool": self.pool_report()}

    # --- the pool itself -------------------------------------------------------------------

    async def list_models(self) -> list[str]:
        """The models under the pool's ``uri`` now (the ingress's catalog asks)."""
        return await asyncio.to_thread(list_pool_models, self.pool.uri, self.store_settings)

    def pool_report(self) -> dict[str, Any]:
        """What this replica holds and how its cache has done."""
        loads = sorted(self.load_seconds)
        return {
            "name": self.name,
            "max_models_per_replica": self.pool.max_models_per_replica,
            "models_loaded": sorted(m for m, e in self.entries.items() if e.loaded),
            "models_loading": sorted(
                m for m, e in self.entries.items() if not e.loaded and e.error is None
            ),
            **self.counters,
            "load_seconds_p50": round(loads[len(loads) // 2], 3) if loads else None,
            "load_seconds_max": round(loads[-1], 3) if loads else None,
        }
