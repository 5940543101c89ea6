"""The app as it runs today: Flask, one Keras model loaded from ``my_model.h5``.

    MODEL_PATH=model_repository/digits-flask/1/my_model.h5 flask --app \
        examples.flask_digits.flask_app run

``POST /predict`` with ``{"image": [[...] x 8]}`` answers ``{"digit": 3, "confidence": 0.97}``.
"""

from __future__ import annotations

import os
from typing import Any

import keras
from flask import Flask, jsonify, request

from examples.flask_digits.logic import answer_of, pixels_of

app = Flask(__name__)
model = keras.models.load_model(os.environ.get("MODEL_PATH", "my_model.h5"), compile=False)


@app.post("/predict")
def predict() -> Any:
    data = request.get_json(silent=True)
    # ... process data ...
    try:
        pixels = pixels_of(data)
    except ValueError as exc:
        return jsonify(error=str(exc)), 400
    probabilities = model.predict(pixels[None, :], verbose=0)[0]
    return jsonify(answer_of(probabilities))
