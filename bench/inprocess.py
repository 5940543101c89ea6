"""The limit: a benchmark model called in-process, no server, at each batch size.

    python -m bench.inprocess --model minilm --seconds 3 --out /tmp/minilm.json

The orchestrator runs this in a child process, so the frameworks (and their threads) are
gone before any server starts. For each batch size the same instance, repeated, is
predicted again and again for ``--seconds`` (at least ``MIN_CALLS`` calls) after a warm-up
call. The best items/s over the batch sizes is the limit; the p50 of one-row calls is the
latency floor. The output of one row is kept as the reference every server must match.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.models import MODELS, ONNX_THREADS, kind, load, sample_batch

DEFAULT_BATCH_SIZES = (1, 8, 16, 32, 64)
MIN_CALLS = 5


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def frameworks(name: str) -> dict[str, Any]:
    """Framework versions and the intra-op threads they use in this process."""
    if name == "minilm-onnx":
        import onnxruntime

        return {"onnxruntime": onnxruntime.__version__, "intra_op_threads": ONNX_THREADS}
    if kind(name) == "digits":
        import tensorflow as tf

        return {
            "tensorflow": tf.__version__,
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        }
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def measure(name: str, batch_sizes: list[int], seconds: float) -> dict[str, Any]:
    """Throughput per batch size, the best one, one-row latency and the reference output."""
    model = load(name)
    reference = model.predict(sample_batch(name, 1))[0]
    by_batch: dict[str, dict[str, float]] = {}
    for rows in batch_sizes:
        batch = sample_batch(name, rows)
        model.predict(batch)  # warm-up: graph tracing, allocator, oneDNN primitives
        times: list[float] = []
        deadline = time.perf_counter() + seconds
        cpu_before = time.process_time()  # every thread of the process: the model's own CPU
        while len(times) < MIN_CALLS or time.perf_counter() < deadline:
            started = time.perf_counter()
            model.predict(batch)
            times.append(time.perf_counter() - started)
        cpu_s = time.process_time() - cpu_before
        by_batch[str(rows)] = {
            "items_per_s": rows * len(times) / sum(times),
            "cpu_ms_per_item": 1000 * cpu_s / (rows * len(times)),
            "call_p50_ms": 1000 * statistics.median(times),
            "call_p99_ms": 1000 * percentile(times, 99),
            "calls": len(times),
        }
        print(f"in-process {name} batch {rows}: {by_batch[str(rows)]}", file=sys.stderr)
    best = max(by_batch, key=lambda b: by_batch[b]["items_per_s"])
    one = by_batch.get("1")
    return {
        "model": name,
        "path": str(model.path),
        "by_batch_size": by_batch,
        "best_batch_size": int(best),
        "best_items_per_s": by_batch[best]["items_per_s"],
        "best_cpu_ms_per_item": by_batch[best]["cpu_ms_per_item"],
        "batch1_p50_ms": one["call_p50_ms"] if one else None,
        "batch1_p99_ms": one["call_p99_ms"] if one else None,
        "reference_output": [float(v) for v in reference],
        "frameworks": frameworks(name),
        "env": {
            k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: measure one model and write its JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.inprocess", description=__doc__)
    parser.add_argument("--model", choices=MODELS, required=True)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(DEFAULT_BATCH_SIZES))
    parser.add_argument("--seconds", type=float, default=3.0, help="per batch size")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    result = measure(args.model, sorted(set(args.batch_sizes)), args.seconds)
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
