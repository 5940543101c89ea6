"""The one Serve deployment class of every model and every pool, whatever its framework.

A replica holds its models in a ``ModelHolder``: ``OneModel`` for a dedicated model (loaded
before the replica takes traffic) or ``PoolModels`` (``deployments/pool.py``) for a pool,
which loads the models requests name. Each Serve method is written once, here: it finds
the request's ``ModelHost`` (``deployments/host.py``) through the holder and asks it. The
framework is the registry's (``deployments/registry.py``); the replica core
(``deployments/core.py``) batches and answers requests for any of them.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any, Protocol

from ray import serve

from deployments.core import Answer, ReplicaCore
from deployments.host import ModelHost
from deployments.registry import servable_class
from serve_app.config import HotSettings, ModelSpec, PoolSpec, StoreSpec, parse_hot_settings
from serve_app.request import PredictRequest

# load_settings key that tells a pool's replica from a dedicated model's.
POOL_KEY = "pool"


class ModelHolder(Protocol):
    """The models of one replica: one dedicated model, or the loaded models of a pool."""

    async def host(self) -> ModelHost:
        """The host of the model the current request is for."""
        ...

    def apply_hot(self, hot: HotSettings) -> None:
        """New hot settings for every model held."""
        ...

    def check_health(self) -> None:
        """Raise if the replica cannot serve."""
        ...

    def report(self) -> dict[str, Any]:
        """What the holder adds to ``model_stats``."""
        ...

    async def list_models(self) -> list[str]:
        """The model names this deployment serves."""
        ...


class OneModel:
    """A dedicated model: one host, loaded before the replica takes traffic."""

    def __init__(self, spec: ModelSpec, store: StoreSpec, hot: HotSettings, core: ReplicaCore):
        self._host = ModelHost(spec, store, hot, servable_class(spec.framework), core.executor)
        self._host.initial_load()

    async def host(self) -> ModelHost:
        return self._host

    def apply_hot(self, hot: HotSettings) -> None:
        self._host.apply_hot(hot)

    def check_health(self) -> None:
        self._host.check_health()

    def report(self) -> dict[str, Any]:
        return {}

    async def list_models(self) -> list[str]:
        return [self._host.name]


class ModelReplica:
    """One replica of a model's or a pool's deployment: batching, versions, status."""

    def __init__(self, load_settings: dict[str, Any], hot_settings: dict[str, Any]) -> None:
        settings = dict(load_settings)
        # The app-level store settings travel with each model's load settings.
        store = StoreSpec.model_validate(settings.pop("store", None) or {})
        pooled = bool(settings.pop(POOL_KEY, False))
        self.name = settings["name"]
        self._base_hot = hot_settings
        hot = parse_hot_settings(hot_settings, self.name)
        self.hot = hot
        self.core = ReplicaCore(
            self.name, hot.batching.max_batch_size, hot.batching.batch_wait_timeout_s
        )
        self.models: ModelHolder
        if pooled:
            from deployments.pool import PoolModels

            self.models = PoolModels(PoolSpec.model_validate(settings), store, hot, self.core)
        else:
            self.models = OneModel(ModelSpec.model_validate(settings), store, hot, self.core)

    # --- Serve hooks ---------------------------------------------------------------------

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply hot settings at once; version changes load in the background, never here
        (Serve takes the replica out of rotation while this runs)."""
        self.hot = parse_hot_settings(user_config, self.name, self._base_hot)
        self.core.configure(
            self.hot.batching.max_batch_size, self.hot.batching.batch_wait_timeout_s
        )
        self.models.apply_hot(self.hot)

    def check_health(self) -> None:
        """Healthy while the replica can answer (a dedicated model: some version can)."""
        self.models.check_health()

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Requests (not handle calls) in this replica: what autoscaling should count
        (``serve_app.autoscaling`` sums it over replicas)."""
        from serve_app.autoscaling import REQUESTS_METRIC

        return {REQUESTS_METRIC: float(self.core.ongoing)}

    # --- requests ------------------------------------------------------------------------

    async def predict_many(self, requests: list[PredictRequest]) -> list[Answer]:
        """Answer the requests of one coalesced call, each on its own: (version, outputs)
        or that request's error."""
        return await self.core.predict_many(await self.models.host(), requests)

    async def generate_stream(
        self,
        text: str,
        max_new_tokens: int,
        parameters: dict[str, Any],
        deadline: float | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream one completion from the default version (models that can stream)."""
        host = await self.models.host()
        async for item in host.generate_stream(text, max_new_tokens, parameters, deadline):
            yield item

    # --- status, metadata, statistics ---------------------------------------------------

    async def model_status(
        self, version: int | None = None, label: str | None = None
    ) -> list[dict[str, Any]]:
        """TF Serving's ``model_version_status``: every version this replica knows."""
        return (await self.models.host()).model_status(version, label)

    async def model_metadata(
        self, version: int | None = None, label: str | None = None
    ) -> dict[str, Any]:
        """TF Serving's metadata response body."""
        return (await self.models.host()).model_metadata(version, label)

    async def model_io(
        self, version: int | None = None, label: str | None = None
    ) -> dict[str, Any]:
        """Platform, available versions and the default signature's public inputs/outputs."""
        return (await self.models.host()).model_io(version, label)

    async def model_stats(self) -> dict[str, Any]:
        """Batching statistics of this replica (Triton's statistics extension shape), and
        where it runs: node, GPU share, CUDA_VISIBLE_DEVICES, device and dtype."""
        host = await self.models.host()
        return {
            "model_stats": [host.stats_json()],
            "batching": self.hot.batching.model_dump(),
            "coalescing": self.core.report(),
            "load_seconds": round(host.load_seconds, 3),
            "versions": host.table.statuses(),
            "version_traffic": host.versions_report(),
            "swaps": list(host.swaps),
            **self.models.report(),
            **replica_report(),
        }

    async def list_models(self) -> list[str]:
        """The models this deployment serves now (a pool's: those under its ``uri``)."""
        return await self.models.list_models()

    async def pool_report(self) -> dict[str, Any]:
        """What a pool's replica holds and how its cache has done (the status page asks);
        empty for a dedicated model's."""
        return self.models.report().get("pool", {})


ModelDeployment = serve.deployment(ModelReplica)


def replica_report() -> dict[str, Any]:
    """Which replica answered and where it runs (node, device, memory)."""
    from deployments.devices import placement_report

    return {
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
