"""The contract every model deployment follows, and the batching machinery they share.

A subclass implements ``load`` (framework objects from a local directory), ``signatures``
and ``infer`` (one blocking model call on a whole batch). This class does the rest: picks
the version, loads once when the replica starts, validates inputs, batches rows from many
requests with ``@serve.batch``, runs the model call off the event loop, and answers status,
metadata and statistics.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

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
from deployments.signature import (
    Signature,
    prepare_inputs,
    requested_outputs,
    squeeze_outputs,
)
from serve_app.config import HotSettings, ModelSpec, StoreSpec, parse_hot_settings
from serve_app.errors import InvalidInput, ModelLoadError, NotFound, ServingError
from serve_app.request import PREDICT, PredictRequest
from serve_app.store import open_store, select_versions, store_notice

logger = logging.getLogger("ray.serve")

DEFAULT_SIGNATURE = "serving_default"


class ModelDeployment:
    """One model, loaded once per replica, served with dynamic batching."""

    platform = "unknown"  # the Open Inference Protocol's platform name

    def __init__(self, load_settings: dict[str, Any]) -> None:
        settings = dict(load_settings)
        # The app-level store settings travel with each model's load settings.
        self.store_settings = StoreSpec.model_validate(settings.pop("store", None) or {})
        self.spec = ModelSpec.model_validate(settings)
        self.name = self.spec.name
        self.store_notice = ""
        self.hot = HotSettings()
        self.stats = BatchStats()
        # One thread: model calls run off the event loop, one batch at a time.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-infer")
        started = time.monotonic()
        self.version = self._load_latest()
        self.load_seconds = time.monotonic() - started
        logger.info(
            "model '%s' version %d loaded in %.2fs", self.name, self.version, self.load_seconds
        )

    def _load_latest(self) -> int:
        store = open_store(self.spec.uri, self.store_settings)
        # Kept for the replica's life: a cached gs:// version stays leased (never evicted).
        self._store = store
        version = select_versions(store.list_versions(), self.spec.version_policy, store.uri)[-1]
        try:
            path = store.fetch(version)
            self.store_notice = store_notice(store)
            if self.store_notice:
                logger.warning("model '%s': %s", self.name, self.store_notice)
            self.load(path)
        except ServingError:
            raise
        except Exception as exc:  # any framework error becomes a readable load failure
            raise ModelLoadError(
                f"model '{self.name}' version {version} at {self.spec.uri} failed to load:"
                f" {type(exc).__name__}: {exc}"
            ) from None
        return version

    # --- implemented by each framework -------------------------------------------------

    def load(self, path: Path) -> None:
        """Load the framework objects from a local directory (called once, at start)."""
        raise NotImplementedError

    def signatures(self) -> dict[str, Signature]:
        """The model's signatures by name; ``serving_default`` is used when none is named."""
        raise NotImplementedError

    def infer(
        self, signature: str, inputs: dict[str, np.ndarray], parameters: dict[str, Any]
    ) -> dict[str, np.ndarray]:
        """One blocking model call on a batch; every output has the batch's rows in dim 0.

        Every row of the batch shares ``parameters`` (requests are grouped by them).
        """
        raise NotImplementedError

    def check_request(self, inputs: dict[str, np.ndarray], parameters: dict[str, Any]) -> None:
        """Framework checks of one request's inputs and parameters, before it joins a batch."""
        if parameters:
            raise InvalidInput(
                f"model '{self.name}' takes no parameters (got {sorted(parameters)})"
            )

    def example_inputs(
        self, signature: Signature, method: str, examples: list[dict[str, Any]]
    ) -> dict[str | None, np.ndarray]:
        """Inputs of a classify/regress request; only TensorFlow models have such signatures."""
        raise InvalidInput(
            f"model '{self.name}' has no {method} signature: {method} needs a TensorFlow"
            " SavedModel with a tensorflow/serving/" + method + " signature"
        )

    def signature_defs(self) -> dict[str, Any]:
        """Signatures in TF Serving's metadata JSON form."""
        return {name: sig.to_tf_json() for name, sig in self.signatures().items()}

    # --- Serve hooks and handle methods ------------------------------------------------

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply hot settings (batching) without a restart; cheap, never loads anything."""
        self.hot = parse_hot_settings(user_config, self.name)
        self._run_batch.set_max_batch_size(self.hot.batching.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(self.hot.batching.batch_wait_timeout_s)

    async def predict(self, request: PredictRequest) -> dict[str, np.ndarray]:
        """Validate one request, batch its rows with other requests', return its outputs."""
        self._check_version(request)
        signature = self._signature(request.signature_name)
        raw = request.inputs
        if request.method != PREDICT:
            raw = self.example_inputs(signature, request.method, request.examples or [])
        prepared = prepare_inputs(signature, raw, request.exact_dtypes)
        self.check_request(prepared.tensors, request.parameters)
        wanted = requested_outputs(signature, request.outputs)
        # A request larger than one batch is cut into batch-sized chunks.
        limit, rows = self.hot.batching.max_batch_size, prepared.rows
        group = parameters_key(request.parameters)
        chunks = [
            BatchItem(
                signature.name,
                slice_rows(prepared.tensors, start, min(start + limit, rows)),
                min(limit, rows - start),
                request.parameters,
                group,
            )
            for start in range(0, rows, limit)
        ]
        outputs = concat_outputs(list(await asyncio.gather(*map(self._submit, chunks))))
        outputs = {name: outputs[name] for name in wanted}
        # TF Serving answers a scalar-per-instance request with scalars per instance.
        return squeeze_outputs(outputs) if prepared.expanded else outputs

    async def predict_versioned(self, request: PredictRequest) -> tuple[int, dict[str, np.ndarray]]:
        """``predict``, and the version that answered (protocols that report it)."""
        return self.version, await self.predict(request)

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
            call = functools.partial(
                self.infer, members[0].signature, concat_inputs(members), members[0].parameters
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
            for i, part in zip(group, split_outputs(outputs, [m.rows for m in members])):
                results[i] = part
        return results  # an exception here is raised to its own caller by _submit

    async def model_status(self) -> list[dict[str, Any]]:
        """TF Serving's ``model_version_status`` entries for this replica."""
        return [
            {
                "version": str(self.version),
                "state": "AVAILABLE",
                # e.g. "serving version 3 from cache: gs://... cannot be reached (...)"
                "status": {"error_code": "OK", "error_message": self.store_notice},
            }
        ]

    async def model_metadata(self, version: int | None = None) -> dict[str, Any]:
        """TF Serving's metadata response body."""
        self._check_version(PredictRequest({}, version=version))
        return {
            "model_spec": {"name": self.name, "signature_name": "", "version": str(self.version)},
            "metadata": {"signature_def": {"signature_def": self.signature_defs()}},
        }

    async def model_io(self, version: int | None = None) -> dict[str, Any]:
        """Platform, versions and the default signature's public inputs/outputs."""
        self._check_version(PredictRequest({}, version=version))
        signature = self._signature("")
        return {
            "platform": self.platform,
            "versions": [self.version],
            "inputs": [(s.name, s.dtype.name, s.shape) for s in signature.inputs.values()],
            "outputs": [
                (s.name, s.dtype.name, s.shape) for s in signature.public_outputs().values()
            ],
        }

    async def model_stats(self) -> dict[str, Any]:
        """Batching statistics of this replica (Triton's statistics extension shape)."""
        return {
            "model_stats": [
                {"name": self.name, "version": str(self.version), **self.stats.to_json()}
            ],
            "batching": self.hot.batching.model_dump(),
            "load_seconds": round(self.load_seconds, 3),
            "replica": {"id": serve.get_replica_context().replica_id.unique_id, "pid": os.getpid()},
        }

    def check_health(self) -> None:
        """The replica is healthy once loaded; load failures never get this far."""

    # --- helpers -----------------------------------------------------------------------

    def _check_version(self, request: PredictRequest) -> None:
        if request.label is not None:
            raise NotFound(f"model '{self.name}' has no version label '{request.label}'")
        if request.version is not None and request.version != self.version:
            raise NotFound(
                f"model '{self.name}' version {request.version} is not served"
                f" (serving version {self.version})"
            )

    def _signature(self, name: str) -> Signature:
        signatures = self.signatures()
        chosen = name or DEFAULT_SIGNATURE
        if chosen not in signatures:
            raise NotFound(
                f"model '{self.name}' has no signature '{chosen}'"
                f" (available: {', '.join(signatures)})"
            )
        return signatures[chosen]
