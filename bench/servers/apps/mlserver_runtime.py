"""MLServer custom runtime for the benchmark models, Open Inference Protocol (V2) REST.

MLServer loads it from ``model-settings.json`` (``implementation``:
``bench.servers.apps.mlserver_runtime.BenchRuntime``); its adaptive batching
(``max_batch_size``, ``max_batch_time``) merges single-instance requests along the first
dimension before ``predict`` and splits the outputs again.
"""

from __future__ import annotations

from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse

from bench.models import OUTPUT_NAMES, load


class BenchRuntime(MLModel):
    """One benchmark model; the model's name in model-settings.json picks which."""

    async def load(self) -> bool:
        """Load the model once, in MLServer's inference worker."""
        self._model = load(self.name)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        """One model call on the (possibly batched) request."""
        request_input = payload.inputs[0]
        if self.name == "minilm":
            x = StringCodec.decode_input(request_input)
        else:
            x = NumpyCodec.decode_input(request_input)
        y = self._model.predict(x)
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output(OUTPUT_NAMES[self.name], y)],
        )
