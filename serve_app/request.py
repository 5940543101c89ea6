"""The framework-neutral request that crosses the handle from the ingress to a model replica."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

PREDICT, CLASSIFY, REGRESS = "predict", "classify", "regress"
# Outputs whose names start with this are for protocol adapters (token counts, finish
# reasons); TF Serving and V2 answers leave them out unless asked for by name.
INTERNAL_PREFIX = "_"
# Versions are int64 in every protocol: at most 18 digits always fit.
MAX_VERSION_DIGITS = 18


@dataclass
class PredictRequest:
    """Decoded tensors plus routing details; ``None`` names the single unnamed input."""

    inputs: dict[str | None, np.ndarray]
    signature_name: str = ""
    version: int | None = None
    label: str | None = None
    # Request-wide settings that are not tensors, such as generation's temperature or seed.
    parameters: dict[str, Any] = field(default_factory=dict)
    # The outputs to return; None returns every public output.
    outputs: list[str] | None = None
    # The Open Inference Protocol declares datatypes, which must then match the signature.
    exact_dtypes: bool = False
    # classify/regress: tf.Example features per example (context already merged in).
    method: str = PREDICT
    examples: list[dict[str, Any]] | None = None
    # time.time() past which the caller no longer waits (skipped by the replica's batcher).
    deadline: float | None = None
