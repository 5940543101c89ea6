"""KServe's Python model server (``kserve.ModelServer``), Open Inference Protocol (V2) REST.

    BENCH_MODEL=digits BENCH_PORT=8103 python -m bench.servers.apps.kserve_app

KServe's model server has no in-process batcher: its batcher is the Knative sidecar agent
(``batcher`` in an InferenceService), which needs Kubernetes. Each request is predicted on
its own. ``predict`` is a plain (sync) method, as in KServe's custom-model docs; KServe
calls it on its event loop.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

from bench.models import OUTPUT_NAMES, load


class BenchModel(Model):
    """One benchmark model behind KServe's V1/V2 REST."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.model: Any = None
        self.load()

    def load(self) -> bool:
        """Load the model once, at start."""
        self.model = load(self.name)
        self.ready = True
        return self.ready

    def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None
    ) -> InferResponse:
        """One model call on the request's rows."""
        x = payload.inputs[0].as_numpy()
        if self.name == "minilm":
            x = [t.decode() if isinstance(t, bytes) else str(t) for t in x.reshape(-1)]
        y = np.ascontiguousarray(self.model.predict(x), dtype=np.float32)
        output = InferOutput(name=OUTPUT_NAMES[self.name], shape=list(y.shape), datatype="FP32")
        output.set_data_from_numpy(y, binary_data=False)  # JSON, not binary
        # KServe's V2 response model requires an id; the request need not carry one.
        response_id = payload.id or str(uuid.uuid4())
        return InferResponse(model_name=self.name, infer_outputs=[output], response_id=response_id)


if __name__ == "__main__":
    model = BenchModel(os.environ["BENCH_MODEL"])
    ModelServer(http_port=int(os.environ["BENCH_PORT"]), enable_grpc=False, workers=1).start(
        [model]
    )
