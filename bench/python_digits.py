"""The digits Keras model as a Python model (``framework: python``) for ``bench.compare``:
the cost of the Python-model path over the built-in TensorFlow one, with a trivial
``preprocess`` (the instance is already the 64 pixels) and no ``postprocess``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class WrappedDigits:
    """``model.keras`` of a digits version, called as the built-in framework calls it."""

    inputs = {"pixels": ("float32", [-1, 64])}
    outputs = {"probabilities": ("float32", [-1, 10])}

    def __init__(self, path: str, options: dict[str, Any]) -> None:
        import keras

        self.model = keras.saving.load_model(
            Path(path) / "model.keras", safe_mode=True, compile=False
        )

    def preprocess(self, instance: Any) -> dict[str, Any]:
        """TF Serving REST: the 64 pixels; a tensor protocol: ``{"pixels": row}``."""
        return {"pixels": instance["pixels"] if isinstance(instance, dict) else instance}

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"probabilities": np.asarray(self.model.predict_on_batch(inputs["pixels"]))}
