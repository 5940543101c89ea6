"""The same app as a Python model (``framework: python``): the Flask route's three steps
become ``preprocess`` (one request body), ``predict`` (a whole batch of many requests) and
``postprocess`` (one answer); ``logic.py`` is shared unchanged.

Served with ``examples/flask_digits/serve_config.yaml``; a client sends the Flask app's body
as one TF Serving instance, ``{"instances": [{"image": ...}]}``, and gets the Flask app's
answer in ``predictions``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from examples.flask_digits.logic import answer_of, pixels_of

MODEL_FILE = "my_model.h5"


class DigitsClassifier:
    """The digits Keras model with the Flask app's pre- and post-processing."""

    inputs = {"pixels": ("float32", [-1, 64])}
    outputs = {"probabilities": ("float32", [-1, 10])}

    def __init__(self, path: str, options: dict[str, Any]) -> None:
        import keras
        import tensorflow as tf

        self.model = keras.models.load_model(
            Path(path) / options.get("file", MODEL_FILE), compile=False
        )
        # One traced graph for every batch size: Keras's predict() retraces and is slower.
        self._call = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)

    def preprocess(self, instance: Any) -> dict[str, np.ndarray]:
        """A Flask body (REST ``instances``); a tensor protocol's row is already pixels."""
        if isinstance(instance, dict) and "pixels" in instance:
            return {"pixels": instance["pixels"]}
        return {"pixels": pixels_of(instance)}

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"probabilities": self._call(inputs["pixels"]).numpy()}

    def postprocess(self, row: dict[str, np.ndarray]) -> dict[str, Any]:
        return answer_of(row["probabilities"])
