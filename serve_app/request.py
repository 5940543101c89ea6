"""The framework-neutral request that crosses the handle from the ingress to a model replica."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

PREDICT, CLASSIFY, REGRESS = "predict", "classify", "regress"
# What a model can do, declared by its framework (``Servable.capabilities``), never guessed
# from a name: the ingress routes by these (OpenAI embeddings need EMBED, completions GENERATE).
EMBED, GENERATE, STREAM = "embed", "generate", "stream"
CAPABILITIES = (PREDICT, CLASSIFY, REGRESS, EMBED, GENERATE, STREAM)
# Outputs whose names start with this are for protocol adapters (token counts, finish
# reasons); TF Serving and V2 answers leave them out unless asked for by name.
INTERNAL_PREFIX = "_"
# The one output of an answer made by the model's ``postprocess``: a list of JSON documents
# (bytes), one per row, answered as TF Serving's ``predictions``.
JSON_ROWS = INTERNAL_PREFIX + "json_rows"
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
    # TF Serving REST ``instances`` as the client sent them (JSON values), for models that
    # decode them themselves (a Python model's ``preprocess``); ``inputs`` is then empty.
    instances: list[Any] | None = None
    # Answer each row as JSON bytes (a Python model's ``postprocess``) where the model can.
    json_rows: bool = False
