"""Triton Inference Server through PyTriton (``nvidia-pytriton``), with dynamic batching.

    BENCH_MODEL=digits BENCH_PORT=8105 /path/to/venv/bin/python -m bench.servers.apps.pytriton_app

Runs only under Debian's ``/usr/bin/python3`` (3.11.2) here: PyTriton fails on the pyenv
Python (pytriton issue #51). PyTriton starts the bundled ``tritonserver``; its Python
backend forwards each batch that Triton's dynamic batcher forms (``max_batch_size``,
``max_queue_delay_microseconds``) to ``infer`` in this process.
"""

from __future__ import annotations

import os

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from bench.models import INPUT_NAMES, OUTPUT_NAMES, OUTPUT_WIDTH, load

NAME = os.environ["BENCH_MODEL"]
MODEL = load(NAME)


@batch
def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
    """One model call on the batch Triton formed."""
    x = inputs[INPUT_NAMES[NAME]]
    if NAME == "minilm":
        x = [row[0] for row in x]  # (n, 1) bytes -> n sentences
    return {OUTPUT_NAMES[NAME]: MODEL.predict(x)}


def main() -> None:
    """Bind the model and serve HTTP on 127.0.0.1:``BENCH_PORT`` (gRPC and metrics next to it)."""
    port = int(os.environ["BENCH_PORT"])
    if NAME == "digits":
        in_tensor = Tensor(name=INPUT_NAMES[NAME], dtype=np.float32, shape=(64,))
    else:
        in_tensor = Tensor(name=INPUT_NAMES[NAME], dtype=bytes, shape=(1,))
    out_tensor = Tensor(name=OUTPUT_NAMES[NAME], dtype=np.float32, shape=(OUTPUT_WIDTH[NAME],))
    config = ModelConfig(
        max_batch_size=int(os.environ.get("BENCH_MAX_BATCH_SIZE", "32")),
        batcher=DynamicBatcher(
            max_queue_delay_microseconds=int(os.environ.get("BENCH_MAX_QUEUE_DELAY_US", "5000"))
        ),
    )
    triton_config = TritonConfig(
        http_address="127.0.0.1",
        http_port=port,
        grpc_address="127.0.0.1",
        grpc_port=port + 10,
        metrics_address="127.0.0.1",
        metrics_port=port + 20,
    )
    with Triton(config=triton_config) as triton:
        triton.bind(
            model_name=NAME,
            infer_func=infer,
            inputs=[in_tensor],
            outputs=[out_tensor],
            config=config,
        )
        triton.serve()


if __name__ == "__main__":
    main()
