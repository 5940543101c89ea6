"""The tutorial service: Flask with the model loaded at start, under gunicorn.

    BENCH_MODEL=digits gunicorn --workers 2 --threads 4 --bind 127.0.0.1:8101 \
        bench.servers.apps.flask_app:app

Each gunicorn worker imports this module and so loads its own copy of the model once, at
start; a request is predicted on its own (no batching), as in the usual tutorial:
``POST /predict {"instances": [...]}`` answers ``{"predictions": [...]}``.
"""

from __future__ import annotations

import os

from flask import Flask, jsonify, request

from bench.models import load

model = load(os.environ["BENCH_MODEL"])
app = Flask(__name__)


@app.post("/predict")
def predict():  # type: ignore[no-untyped-def]
    """Predict the request's instances in one model call."""
    instances = request.get_json(force=True)["instances"]
    return jsonify({"predictions": model.predict(instances).tolist()})
