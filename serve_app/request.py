"""The framework-neutral request that crosses the handle from the ingress to a model replica."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class PredictRequest:
    """Decoded tensors plus routing details; ``None`` names the single unnamed input."""

    inputs: dict[str | None, np.ndarray]
    signature_name: str = ""
    version: int | None = None
    label: str | None = None
    parameters: dict = field(default_factory=dict)
