"""The ingress's view of the model pools: which model names each pool serves now.

A pool's models are the subdirectories of its ``uri``; the pool's replicas list them (they
hold the storage credentials). The catalog re-lists every pool every
``discovery_interval_s``, and at once (at most once a second) when a request names a model
it does not know, so a model copied into a pool's ``uri`` is served without a redeploy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from ray.serve.handle import DeploymentHandle

from serve_app.replica_api import ReplicaMethod

logger = logging.getLogger("ray.serve")

# A request for an unknown name re-lists the pools at most this often.
MISS_REFRESH_S = 1.0
# A pool with no replica to answer must not hold up requests for other names.
LIST_TIMEOUT_S = 10.0


@dataclass
class PoolView:
    """One pool as the ingress sees it."""

    handle: DeploymentHandle
    kind: str  # "tensorflow" or the transformers task
    discovery_interval_s: float
    models: set[str] = field(default_factory=set)
    listed_at: float = 0.0


class PoolCatalog:
    """Model name -> pool, refreshed in the background and on a miss."""

    def __init__(self, pools: dict[str, PoolView], dedicated: set[str]) -> None:
        self.pools = pools
        self.dedicated = dedicated  # a dedicated model's name is never a pool model's
        self.owner: dict[str, str] = {}  # model name -> pool name
        self._handles: dict[str, DeploymentHandle] = {}
        self._refreshing: asyncio.Task | None = None
        self._background: asyncio.Task | None = None
        self._warned: set[tuple[str, str]] = set()

    def kind(self, model: str) -> str | None:
        pool = self.owner.get(model)
        return self.pools[pool].kind if pool is not None else None

    def names(self) -> list[str]:
        return sorted(self.owner)

    async def lookup(self, model: str) -> tuple[str, DeploymentHandle] | None:
        """The pool serving ``model`` and a handle that routes to it, or None."""
        self._start()
        if model not in self.owner:
            await self.refresh(max_age=MISS_REFRESH_S)
        pool = self.owner.get(model)
        if pool is None:
            return None
        handle = self._handles.get(model)
        if handle is None:
            # Serve routes by this id to the replicas that hold (or are loading) the model.
            handle = self.pools[pool].handle.options(multiplexed_model_id=model)
            self._handles[model] = handle
        return pool, handle

    async def refresh(self, max_age: float = 0.0) -> None:
        """Re-list the pools listed more than ``max_age`` seconds ago (one listing at a time)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh(max_age))
        await asyncio.shield(self._refreshing)

    async def _refresh(self, max_age: float) -> None:
        now = time.monotonic()
        stale = [(name, p) for name, p in self.pools.items() if now - p.listed_at >= max_age]
        listings = await asyncio.gather(
            *(self._list(pool) for _, pool in stale), return_exceptions=True
        )
        for (name, pool), listed in zip(stale, listings):
            if self.pools.get(name) is not pool:
                continue  # the pool was removed (or replaced) while it was being listed
            if isinstance(listed, BaseException):
                logger.warning("cannot list the models of pool '%s': %s", name, listed)
                continue
            pool.models = set(listed)
            pool.listed_at = time.monotonic()
        self.rebuild()

    async def _list(self, pool: PoolView) -> list[str]:
        listing = ReplicaMethod.LIST_MODELS.of(pool.handle).remote()
        return await asyncio.wait_for(listing, timeout=LIST_TIMEOUT_S)

    def rebuild(self) -> None:
        """Names are unique across the fleet: a dedicated model wins over a pool's, and the
        first pool in the config over later ones; the loser is skipped, with a warning."""
        owner: dict[str, str] = {}
        for pool_name, pool in self.pools.items():
            for model in sorted(pool.models):
                taken_by = "a dedicated model" if model in self.dedicated else owner.get(model)
                if taken_by is None:
                    owner[model] = pool_name
                elif (pool_name, model) not in self._warned:
                    self._warned.add((pool_name, model))
                    logger.warning(
                        "pool '%s': model '%s' is not served, its name is taken by %s",
                        pool_name,
                        model,
                        taken_by if taken_by == "a dedicated model" else f"pool '{taken_by}'",
                    )
        self.owner = owner
        self._handles = {m: h for m, h in self._handles.items() if m in owner}

    def _start(self) -> None:
        if self._background is None and self.pools:
            self._background = asyncio.get_running_loop().create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        while True:
            # Pools come and go (their own applications): the shortest interval of those now.
            interval = min((p.discovery_interval_s for p in self.pools.values()), default=30.0)
            try:
                await self.refresh(max_age=interval)
            except Exception:  # keep the last view; the next round tries again
                logger.warning("pool discovery failed", exc_info=True)
            await asyncio.sleep(interval)
