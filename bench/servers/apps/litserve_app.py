"""LitServe with its own batching (``LitAPI(max_batch_size, batch_timeout)``).

    BENCH_MODEL=digits BENCH_PORT=8102 python -m bench.servers.apps.litserve_app

``POST /predict {"input": <one instance>}`` answers ``{"output": [...]}``. LitServe's
inference worker collects up to ``BENCH_MAX_BATCH_SIZE`` requests, waiting at most
``BENCH_BATCH_TIMEOUT_S`` for the batch to fill, and calls ``predict`` once on the batch.
"""

from __future__ import annotations

import os
from typing import Any

import litserve as ls
import numpy as np

from bench.models import load


class BenchAPI(ls.LitAPI):
    """One benchmark model behind LitServe."""

    def setup(self, device: str) -> None:
        """Load the model once, in the inference worker."""
        self.name = os.environ["BENCH_MODEL"]
        self.model = load(self.name)

    def decode_request(self, request):  # type: ignore[no-untyped-def]
        """One instance: 64 floats (digits) or one sentence (minilm).

        ``request`` stays unannotated: LitServe reads this parameter's annotation to type the
        endpoint's body, and a string annotation (``from __future__``) would turn it into a
        query parameter.
        """
        return request["input"]

    def batch(self, inputs: list[Any]) -> Any:
        """Instances to the model's batch form."""
        if self.name == "digits":
            return np.asarray(inputs, dtype=np.float32)
        return list(inputs)

    def predict(self, x: Any) -> np.ndarray:
        """One model call on the batch."""
        return self.model.predict(x)

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        """One output row per request."""
        return list(output)

    def encode_response(self, output: np.ndarray) -> dict[str, Any]:
        """The request's output row as JSON."""
        return {"output": output.tolist()}


def main() -> None:
    """Start LitServe on 127.0.0.1:``BENCH_PORT`` with one inference worker on the CPU."""
    api = BenchAPI(
        max_batch_size=int(os.environ.get("BENCH_MAX_BATCH_SIZE", "32")),
        batch_timeout=float(os.environ.get("BENCH_BATCH_TIMEOUT_S", "0.005")),
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=int(os.environ["BENCH_PORT"]), generate_client_file=False)


if __name__ == "__main__":
    main()
