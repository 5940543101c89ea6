"""One loaded version of a model: the framework objects and the calls on them.

A deployment replica holds one ``Servable`` per loaded version (TF Serving's word), so a
new version can load beside the one serving and take over without a restart.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel

from deployments.signature import Signature, prepare_inputs
from serve_app.errors import InvalidInput, ServingError, UnknownSignature
from serve_app.request import PREDICT, PredictRequest

if TYPE_CHECKING:
    from deployments.batching import BatchItem
    from serve_app.config import ModelSpec

DEFAULT_SIGNATURE = "serving_default"
# True once nobody waits for a model call's answer (deadlines passed, callers gone).
StopCheck = Callable[[], bool]


class Servable:
    """A framework model of one version; subclasses implement load, signatures and infer.

    A framework is one such subclass, registered by name in ``deployments/registry.py``. Its
    class attributes declare what the config may say of it (tasks, dtype, its own options
    block) and ``capabilities`` what it can do; the replica core, batching, versions, pools,
    the store and every protocol are shared.
    """

    platform = "unknown"  # the Open Inference Protocol's platform name
    # The ``task`` values it serves (empty: it takes none), and whether one is required.
    tasks: ClassVar[tuple[str, ...]] = ()
    task_required: ClassVar[bool] = False
    # Whether it takes ``dtype`` (the dtype weights are loaded in).
    takes_dtype: ClassVar[bool] = False
    # Its own settings: a block named after the framework in the args (``python: {...}``),
    # validated as strictly as the rest; None: it takes none.
    options_model: ClassVar[type[BaseModel] | None] = None
    # TF Serving REST ``instances`` reach the model as JSON, undecoded (it decodes them).
    json_instances: ClassVar[bool] = False
    # Warm up on the replica's inference thread (which then cannot serve meanwhile) rather
    # than on the loader thread: for frameworks whose compute threads belong to the thread
    # that first computes.
    warm_up_on_inference_thread = False

    def __init__(self, spec: ModelSpec, path: Path, executor: Executor) -> None:
        self.spec = spec
        self.name = spec.name
        # The replica's inference thread: model calls run there, one at a time.
        self._executor = executor
        self.load(path)

    # --- declared by each framework ----------------------------------------------------

    @classmethod
    def capabilities(cls, task: str | None, options: dict[str, Any]) -> frozenset[str]:
        """What a model of this framework (with this task and options) can do."""
        return frozenset({PREDICT})

    @classmethod
    def parse_options(cls, options: dict[str, Any]) -> Any:
        """The framework's options block, validated (None if it takes no options)."""
        return None if cls.options_model is None else cls.options_model.model_validate(options)

    # --- implemented by each framework -------------------------------------------------

    def load(self, path: Path) -> None:
        """Load the framework objects from a local directory."""
        raise NotImplementedError

    def signatures(self) -> dict[str, Signature]:
        """The model's signatures by name; ``serving_default`` is used when none is named."""
        raise NotImplementedError

    def infer(
        self,
        signature: str,
        inputs: dict[str, np.ndarray],
        parameters: dict[str, Any],
        stop: StopCheck | None = None,
    ) -> dict[str, np.ndarray]:
        """One blocking model call on a batch; every output has the batch's rows in dim 0.

        Every row of the batch shares ``parameters`` (requests are grouped by them). A long
        call (generation) ends early once ``stop()`` is true: nobody waits for it any more.
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

    def preprocesses(self, request: PredictRequest) -> bool:
        """Whether ``preprocess`` must turn this request into inputs (off the event loop)."""
        return False

    def preprocess(self, request: PredictRequest) -> dict[str | None, np.ndarray]:
        """The raw inputs of a request the model prepares itself (runs off the event loop,
        before batching; raises the request's own error)."""
        raise NotImplementedError

    def postprocesses(self, request: PredictRequest) -> bool:
        """Whether ``postprocess`` answers this request (as JSON rows)."""
        return False

    def postprocess(self, outputs: dict[str, np.ndarray]) -> list[bytes]:
        """One request's outputs as JSON, one encoded value per row (off the event loop)."""
        raise NotImplementedError

    def submit(self, item: BatchItem) -> asyncio.Future | None:
        """A model that schedules its own calls (continuous batching) takes a checked item
        here and returns the future of its outputs; None: the replica's batcher runs it."""
        return None

    def generate_stream(
        self,
        text: str,
        max_new_tokens: int,
        parameters: dict[str, Any],
        deadline: float | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """One completion streamed as it is generated (text-generation models; the items
        are named in ``serve_app/text_tasks.py``)."""
        raise ServingError(f"model '{self.name}' cannot stream")

    def apply_batching(self, max_batch_size: int) -> None:
        """A new ``max_batch_size`` from the hot settings (for a model that batches itself)."""

    def signature_defs(self) -> dict[str, Any]:
        """Signatures in TF Serving's metadata JSON form."""
        return {name: sig.to_tf_json() for name, sig in self.signatures().items()}

    def warmup_inputs(self, signature: Signature) -> dict[str | None, np.ndarray] | None:
        """One row of inputs for a warm-up call, or None where none can be made up."""
        row: dict[str | None, np.ndarray] = {}
        for name, spec in signature.inputs.items():
            if spec.default is not None:
                continue
            if spec.shape is None:
                return None  # e.g. serialized tf.Examples: nothing sensible to invent
            shape = tuple(1 if d < 0 else d for d in spec.shape)
            fill: Any = b"warm-up" if spec.dtype.kind == "O" else 0
            row[name] = np.full(shape, fill, dtype=spec.dtype)
        return row

    def release(self) -> None:
        """Drop the framework objects so their memory (and GPU memory) can be freed."""
        for attribute in list(vars(self)):
            if attribute not in ("spec", "name", "_executor"):
                delattr(self, attribute)
        gc.collect()

    # --- shared -----------------------------------------------------------------------

    def signature(self, name: str) -> Signature:
        """The signature called ``name`` (default: ``serving_default``), or 400.

        An unknown signature is the request's fault: TF Serving answers INVALID_ARGUMENT
        (400 on REST), not NOT_FOUND, which it keeps for models and versions.
        """
        signatures = self.signatures()
        chosen = name or DEFAULT_SIGNATURE
        if chosen not in signatures:
            raise UnknownSignature(
                f"model '{self.name}' has no signature '{chosen}'"
                f" (available: {', '.join(signatures)})"
            )
        return signatures[chosen]

    def warm_up(self) -> None:
        """Run one made-up request through the default signature, as a load check."""
        signatures = self.signatures()
        if DEFAULT_SIGNATURE not in signatures:
            return
        signature = signatures[DEFAULT_SIGNATURE]
        raw = self.warmup_inputs(signature)
        if raw is None:
            return
        prepared = prepare_inputs(signature, raw)
        self.infer(signature.name, prepared.tensors, {})
