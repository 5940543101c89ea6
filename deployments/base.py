"""The dedicated model deployment: one model, its versions, its own replicas.

The model itself (versions loaded in the background, requests prepared for batching) is a
``ModelHost`` (``deployments/host.py``); this class is the Serve deployment around it, with
the dynamic batcher and Serve's hooks. A pool (``deployments/pool.py``) holds many hosts.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from ray import serve

from deployments.core import Answer, ReplicaCore
from deployments.host import ModelHost
from deployments.servable import Servable
from serve_app.config import ModelSpec, StoreSpec, parse_hot_settings
from serve_app.request import PredictRequest


class ModelDeployment:
    """One model in one replica: its versions, dynamic batching, status and metadata."""

    servable_class: ClassVar[type[Servable]]

    def __init__(self, load_settings: dict[str, Any], hot_settings: dict[str, Any]) -> None:
        settings = dict(load_settings)
        # The app-level store settings travel with each model's load settings.
        store_settings = StoreSpec.model_validate(settings.pop("store", None) or {})
        spec = ModelSpec.model_validate(settings)
        self.name = spec.name
        self._base_hot = hot_settings
        hot = parse_hot_settings(hot_settings, self.name)
        self.core = ReplicaCore(
            self.name, hot.batching.max_batch_size, hot.batching.batch_wait_timeout_s
        )
        self.host = ModelHost(spec, store_settings, hot, self.servable_class, self.core.executor)
        self.host.initial_load()

    # --- Serve hooks ---------------------------------------------------------------------

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply hot settings at once; version changes load in the background, never here
        (Serve takes the replica out of rotation while this runs)."""
        hot = parse_hot_settings(user_config, self.name, self._base_hot)
        self.core.configure(hot.batching.max_batch_size, hot.batching.batch_wait_timeout_s)
        self.host.apply_hot(hot)

    def check_health(self) -> None:
        """Healthy while some version can answer."""
        self.host.check_health()

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Requests (not handle calls) in this replica: what autoscaling should count."""
        return autoscaling_stats(self.core)

    # --- requests ------------------------------------------------------------------------

    async def predict_many(self, requests: list[PredictRequest]) -> list[Answer]:
        """Answer the requests of one coalesced call, each on its own: (version, outputs)
        or that request's error."""
        return await self.core.predict_many(self.host, requests)

    async def generate_stream(
        self,
        text: str,
        max_new_tokens: int,
        parameters: dict[str, Any],
        deadline: float | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream one completion from the default version (text-generation models)."""
        async for item in self.host.generate_stream(text, max_new_tokens, parameters, deadline):
            yield item

    # --- status, metadata, statistics ---------------------------------------------------

    async def model_status(
        self, version: int | None = None, label: str | None = None
    ) -> list[dict[str, Any]]:
        """TF Serving's ``model_version_status``: every version this replica knows."""
        return self.host.model_status(version, label)

    async def model_metadata(
        self, version: int | None = None, label: str | None = None
    ) -> dict[str, Any]:
        """TF Serving's metadata response body."""
        return self.host.model_metadata(version, label)

    async def model_io(
        self, version: int | None = None, label: str | None = None
    ) -> dict[str, Any]:
        """Platform, available versions and the default signature's public inputs/outputs."""
        return self.host.model_io(version, label)

    async def model_stats(self) -> dict[str, Any]:
        """Batching statistics of this replica (Triton's statistics extension shape), and
        where it runs: node, GPU share, CUDA_VISIBLE_DEVICES, device and dtype."""
        return {
            "model_stats": [self.host.stats_json()],
            "batching": self.host.hot.batching.model_dump(),
            "coalescing": self.core.report(),
            "load_seconds": round(self.host.load_seconds, 3),
            "versions": self.host.table.statuses(),
            "version_traffic": self.host.versions_report(),
            "swaps": list(self.host.swaps),
            **replica_report(),
        }


def autoscaling_stats(core: ReplicaCore) -> dict[str, float]:
    """Serve's custom autoscaling metric: requests in this replica, however many calls
    carried them (``serve_app.autoscaling`` sums it over replicas)."""
    from serve_app.autoscaling import REQUESTS_METRIC

    return {REQUESTS_METRIC: float(core.ongoing)}


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
