"""The dedicated model deployment: one model, its versions, its own replicas.

The model itself (versions loaded in the background, requests prepared for batching) is a
``ModelHost`` (``deployments/host.py``); this class is the Serve deployment around it, with
the dynamic batcher and Serve's hooks. A pool (``deployments/pool.py``) holds many hosts.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import numpy as np
from ray import serve

from deployments.batcher import DynamicBatcher
from deployments.batching import BatchItem
from deployments.host import ModelHost, run_batch
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
        # One thread: model calls run off the event loop, one batch at a time.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-infer")
        hot = parse_hot_settings(hot_settings, self.name)
        self._batcher = DynamicBatcher(
            self._run_batch,
            rows_of,
            hot.batching.max_batch_size,
            hot.batching.batch_wait_timeout_s,
        )
        self.host = ModelHost(
            spec,
            store_settings,
            hot,
            self.servable_class,
            self._executor,
            self._submit,
        )
        self.host.initial_load()

    # --- Serve hooks ---------------------------------------------------------------------

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply hot settings at once; version changes load in the background, never here
        (Serve takes the replica out of rotation while this runs)."""
        hot = parse_hot_settings(user_config, self.name, self._base_hot)
        self._batcher.configure(hot.batching.max_batch_size, hot.batching.batch_wait_timeout_s)
        self.host.apply_hot(hot)

    def check_health(self) -> None:
        """Healthy while some version can answer."""
        self.host.check_health()

    # --- requests ------------------------------------------------------------------------

    async def predict(self, request: PredictRequest) -> dict[str, np.ndarray]:
        """Validate one request, batch its rows with other requests', return its outputs."""
        return (await self.host.predict_versioned(request))[1]

    async def predict_versioned(self, request: PredictRequest) -> tuple[int, dict[str, np.ndarray]]:
        """``predict``, and the version that answered (protocols that report it)."""
        return await self.host.predict_versioned(request)

    async def _submit(self, item: BatchItem) -> dict[str, np.ndarray]:
        return await self._batcher.submit(item)

    async def _run_batch(self, items: list[BatchItem]) -> list[Any]:
        return await run_batch(items, self._executor, f"deployment '{self.name}'")

    async def generate_stream(
        self, text: str, max_new_tokens: int, parameters: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream one completion from the default version (text-generation models)."""
        async for item in self.host.generate_stream(text, max_new_tokens, parameters):
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
            "load_seconds": round(self.host.load_seconds, 3),
            "versions": self.host.table.statuses(),
            **replica_report(),
        }


def rows_of(item: BatchItem) -> int:
    """A batch counts rows (instances), not requests."""
    return item.rows


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
