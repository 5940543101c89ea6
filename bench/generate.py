"""Generation benchmark: time to first token, inter-token latency, output tokens per second.

    python -m bench.generate --out bench/results/generate.json

For ``tiny-gpt2`` and ``gpt2-124m`` (GPT-2 small's shape, 124M parameters, random weights;
both built offline by ``serve_app/examples.py``), at concurrency 1, 8 and 32, each system
gets the same closed-loop load for ``--duration`` seconds per level: every client sends
``/v1/completions`` requests one after another, greedy, prompts and ``max_tokens`` cycling
through ``PROMPTS`` and ``BUDGETS`` (random weights never end a text early, so each request
generates its whole budget). Systems:

- ``continuous``: this service (``serve run`` with ``make run``'s fast path), continuous
  batching (``transformers.generation_batching: continuous``, the default); streamed.
- ``continuous-between``: the same with ``transformers.prefill: between_steps`` (prefills
  and decoding steps take turns; the default, ``auto``, prefills beside long steps).
- ``continuous-plain``: the same, not streamed (answers whole, as ``request`` is measured).
- ``request``: the same service and commit with ``generation_batching: request`` (whole
  requests batched into one ``generate()`` call, the code path before continuous batching);
  not streamed, since a streamed request there has a ``generate()`` call of its own.
- ``transformers-serve`` / ``transformers-serve-cb``: ``transformers serve`` on the same
  model directory, without and with its ``--continuous-batching``; streamed.
- ``static``: in-process ``model.generate()`` on static batches of ``c`` requests (each
  batch runs to its longest budget; only each request's own budget counts as output).

Then the "short among long" check on ``gpt2-124m``: the latency of a request for 8 new tokens
alone, and sent while 16 requests for 200 new tokens are generating.

Each level's clients run ``--warmup`` seconds before its window (their first requests all
go at once; the window sees the steady state). Streamed requests time each text chunk as it
arrives (one token each); a request not streamed has its first token when its whole answer
arrives. Tokens per second counts the tokens that arrived within the measured window. The
machine is recorded with the results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.machine import describe as describe_machine
from bench.procs import ServerProcess, port_in_use
from serve_app.examples import GPT2_SMALL, TINY_GPT2, build_gpt2_small, build_tiny_gpt2
from serve_app.fast_path import FAST_PATH_ENV

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS = (TINY_GPT2, GPT2_SMALL)
LEVELS = (1, 8, 32)
SYSTEMS = (
    "continuous",
    "continuous-between",
    "continuous-plain",
    "request",
    "transformers-serve",
    "transformers-serve-cb",
    "static",
)
PROMPTS = (
    "Once upon a time",
    "The quick brown fox jumps over the lazy dog and then",
    "Hello",
    "Models are served from one endpoint, batched dynamically, and swapped without a dropped"
    " request while",
    "In a galaxy far away",
    "Tokens per second",
)
BUDGETS = (16, 64, 32, 128)
SHORT_BUDGET, LONG_BUDGET, LONG_REQUESTS = 8, 200, 16
HTTP_PORT = 8000
TRANSFORMERS_PORT = 8011
RAY_TMPDIR = "/tmp/ray-bench-generate"
# Compute threads of every system's model (--threads). The recorded main run used one; the
# drained c=32 runs measured one and two for this service and `transformers serve`, and both
# did better with two on this 2-core machine (bench/NOTES.md, "Continuous batching").
THREADS = 1
# Seconds the clients run before each measured window: at its start every client sends at
# once, a burst the steady state never sees again (runs before 2026-12-07T02:40 had none).
WARMUP_S = 10.0


@dataclass
class Level:
    """One system's measurements at one concurrency."""

    concurrency: int
    duration_s: float = 0.0
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    ttft_s: list[float] = field(default_factory=list)
    itl_s: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "duration_s": round(self.duration_s, 2),
            "requests": self.requests,
            "errors": self.errors,
            "output_tokens": self.tokens,
            "tokens_per_s": round(self.tokens / self.duration_s, 2) if self.duration_s else None,
            "ttft_p50_ms": _ms(_percentile(self.ttft_s, 50)),
            "ttft_p99_ms": _ms(_percentile(self.ttft_s, 99)),
            "itl_p50_ms": _ms(_percentile(self.itl_s, 50)),
            "itl_p99_ms": _ms(_percentile(self.itl_s, 99)),
            "latency_p50_ms": _ms(_percentile(self.latency_s, 50)),
            "error_samples": self.error_samples[:3],
        }


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1000 * seconds, 2)


def request_mix(client: int, sent: int) -> tuple[str, int]:
    """The prompt and budget of a client's ``sent``-th request."""
    return PROMPTS[(3 * client + sent) % len(PROMPTS)], BUDGETS[(client + sent) % len(BUDGETS)]


# --- clients ---------------------------------------------------------------------------


async def complete(
    http: aiohttp.ClientSession,
    url: str,
    model: str,
    prompt: str,
    budget: int,
    stream: bool,
    until: float,
    level: Level,
    counted_from: float = 0.0,
) -> None:
    """One completion. Its tokens that arrive between ``counted_from`` and ``until`` count;
    its time to first token and latency count if it was sent from ``counted_from`` on and
    they end before ``until``."""
    body = {"model": model, "prompt": prompt, "max_tokens": budget, "temperature": 0}
    started = time.perf_counter()
    measured = time.time() >= counted_from  # sent in the window, not in the warm-up
    try:
        if not stream:
            async with http.post(url, json=body) as answer:
                if answer.status != 200:
                    raise RuntimeError(f"{answer.status}: {(await answer.text())[:200]}")
                usage = (await answer.json())["usage"]
            now = time.perf_counter()
            if measured and time.time() <= until:
                level.tokens += usage["completion_tokens"]
                level.ttft_s.append(now - started)
                level.latency_s.append(now - started)
                level.requests += 1
            return
        body.update(stream=True, stream_options={"include_usage": True})
        arrivals: list[float] = []
        async with http.post(url, json=body) as answer:
            if answer.status != 200:
                raise RuntimeError(f"{answer.status}: {(await answer.text())[:200]}")
            async for raw in answer.content:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("choices") and chunk["choices"][0].get("text"):
                    arrivals.append(time.perf_counter())
                    if counted_from <= time.time() <= until:
                        level.tokens += 1
                        if measured and len(arrivals) == 1:
                            level.ttft_s.append(arrivals[0] - started)
        if measured:
            level.itl_s.extend(b - a for a, b in itertools.pairwise(arrivals))
        if measured and time.time() <= until:
            level.latency_s.append(time.perf_counter() - started)
            level.requests += 1
    except (aiohttp.ClientError, TimeoutError, RuntimeError, ValueError, KeyError) as exc:
        if measured and time.time() <= until:
            level.errors += 1
            level.error_samples.append(f"{type(exc).__name__}: {exc}"[:200])


async def closed_loop(
    url: str,
    model: str,
    concurrency: int,
    duration: float,
    stream: bool,
    drain: bool = False,
    warmup: float = 0.0,
) -> Level:
    """``concurrency`` clients, each sending its next request when its last one is answered.

    Window (default): the clients run ``warmup`` seconds first, so that the window sees them
    in their steady state rather than all sending their first request at once; then what
    arrives within ``duration`` counts, and the time to first token and latency of the
    requests sent within it (a request still running at the end counts its first token, and
    is abandoned; a request answered whole after the end counts nothing, so long answers that
    are not streamed are undercounted). ``drain`` (no warm-up): clients stop sending at the
    end, every request sent is awaited and counts, over the time until the last answer.
    """
    level = Level(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency + 4)
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        # One request first: load paths warm, nothing measured.
        await complete(http, url, model, PROMPTS[0], 4, stream, 0, Level(1))
        if drain:
            warmup = 0.0
        start = time.time() + warmup
        until = start + duration
        counted_until = float("inf") if drain else until

        async def client(index: int) -> None:
            sent = 0
            while time.time() < until:
                prompt, budget = request_mix(index, sent)
                await complete(
                    http, url, model, prompt, budget, stream, counted_until, level, start
                )
                sent += 1

        tasks = [asyncio.ensure_future(client(i)) for i in range(concurrency)]
        if drain:
            await asyncio.gather(*tasks)
            level.duration_s = time.time() - start
            return level
        await asyncio.wait(tasks, timeout=warmup + duration)
        for task in tasks:  # requests still running at the end are abandoned
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        level.duration_s = duration
    return level


async def short_among_long(url: str, model: str, stream: bool) -> dict[str, Any]:
    """Latency of a short request alone, and sent while long ones are generating."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as http:

        async def short() -> float:
            level = Level(1)
            await complete(
                http, url, model, "Hello", SHORT_BUDGET, stream, time.time() + 900, level
            )
            if not level.latency_s:
                raise RuntimeError(f"the short request failed: {level.error_samples}")
            return level.latency_s[0]

        alone = statistics.median([await short() for _ in range(3)])
        long_level = Level(LONG_REQUESTS)
        longs = [
            asyncio.ensure_future(
                complete(http, url, model, p, LONG_BUDGET, stream, time.time() + 900, long_level)
            )
            for p in (PROMPTS * LONG_REQUESTS)[:LONG_REQUESTS]
        ]
        await asyncio.sleep(3.0)  # the long ones are generating
        amid = await short()
        long_running = sum(not task.done() for task in longs)
        await asyncio.gather(*longs)
    return {
        "short_alone_ms": _ms(alone),
        "short_amid_long_ms": _ms(amid),
        "ratio": round(amid / alone, 2),
        "long_requests_still_running_when_short_finished": long_running,
        "long_latency_p50_ms": _ms(_percentile(long_level.latency_s, 50)),
    }


# --- systems -----------------------------------------------------------------------------


def build_models(root: Path) -> dict[str, Path]:
    """Both models in ``root`` (built once, offline)."""
    builders = {TINY_GPT2: build_tiny_gpt2, GPT2_SMALL: build_gpt2_small}
    paths = {}
    for name, build in builders.items():
        if not (root / name / "1" / "model.safetensors").is_file():
            build(root)
        paths[name] = root / name
    return paths


def serve_config(
    models: dict[str, Path],
    batching: str,
    threads: int = THREADS,
    prefill: str = "own_thread",
) -> dict[str, Any]:
    """``serve_config.yaml``'s ingress and tiny-gpt2 application, one per benchmark model,
    with room for 32 concurrent generations and the batching and prefill modes asked for."""
    config = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    apps = config["applications"]
    template = next(a for a in apps if a["name"] == TINY_GPT2)
    config["applications"] = [a for a in apps if a["name"] == "ingress"]
    for name, path in models.items():
        app = json.loads(json.dumps(template))
        app["name"] = name
        app["runtime_env"]["env_vars"]["OMP_NUM_THREADS"] = str(threads)
        app["args"].update(
            name=name,
            uri=str(path),
            batching={"max_batch_size": 32, "batch_wait_timeout_s": 0.01},
            transformers={"generation_batching": batching, "prefill": prefill},
        )
        config["applications"].append(app)
    return config


def _wait_http(url: str, timeout_s: float, server: ServerProcess, ready: Any = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.popen.poll() is not None:
            raise RuntimeError(f"{server.name} exited; see {server.log_path}")
        with (
            contextlib.suppress(OSError, ValueError),
            urllib.request.urlopen(url, timeout=5) as answer,
        ):
            if ready is None or ready(json.loads(answer.read())):
                return
        time.sleep(2)
    raise RuntimeError(f"{server.name} not ready after {timeout_s:.0f}s; see {server.log_path}")


def run_service(
    models: dict[str, Path],
    batching: str,
    stream: bool,
    args: argparse.Namespace,
    prefill: str = "own_thread",
) -> dict:
    """This service in one batching (and prefill) mode: every model, every level, the
    short-among-long check."""
    workdir = Path(args.workdir) / f"{batching}-{prefill}"
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "serve_config.yaml"
    config = serve_config(models, batching, args.threads, prefill)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    for port in (HTTP_PORT, 9000, 8500, 9500, 8404):
        if port_in_use(port):
            raise RuntimeError(f"port {port} is in use: stop what serves there first")
    env = {
        **os.environ,
        **FAST_PATH_ENV,
        "RAY_TMPDIR": RAY_TMPDIR,
        "RAY_USAGE_STATS_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("RAY_ADDRESS", None)
    argv = [str(REPO_ROOT / ".venv" / "bin" / "serve"), "run", str(config_path)]
    server = ServerProcess.start(f"serve-{batching}", argv, env, REPO_ROOT, workdir / "serve.log")
    url = f"http://127.0.0.1:{HTTP_PORT}/v1/completions"
    try:

        def ready(fleet: dict) -> bool:
            running = {m["name"]: m.get("running_replicas") or 0 for m in fleet.get("models", [])}
            return all(running.get(name, 0) >= 1 for name in models)

        _wait_http(f"http://127.0.0.1:{HTTP_PORT}/fleet", 600, server, ready)
        return measure(url, models, stream, args)
    finally:
        server.stop(grace_s=45)


def run_transformers_serve(
    models: dict[str, Path], continuous: bool, args: argparse.Namespace
) -> dict:
    """``transformers serve`` with one model preloaded, each model in turn."""
    results: dict[str, Any] = {}
    for name, path in models.items():
        if name not in args.models:
            continue
        python = REPO_ROOT / "bench" / ".venvs" / "transformers-serve" / "bin" / "python"
        if not python.exists():
            raise RuntimeError(f"{python} is missing: run `make bench-setup`")
        argv = [
            str(python),
            "-c",
            "import sys; from transformers.cli.transformers import main; sys.exit(main())",
            "serve",
            str(path / "1"),
            "--port",
            str(TRANSFORMERS_PORT),
            "--device",
            "cpu",
            "--continuous-batching" if continuous else "--no-continuous-batching",
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
        label = "transformers-serve" + ("-cb" if continuous else "")
        workdir = Path(args.workdir) / label
        workdir.mkdir(parents=True, exist_ok=True)
        server = ServerProcess.start(label, argv, env, REPO_ROOT, workdir / f"{name}.log")
        try:
            _wait_http(f"http://127.0.0.1:{TRANSFORMERS_PORT}/health", 300, server)
            url = f"http://127.0.0.1:{TRANSFORMERS_PORT}/v1/completions"
            results.update(
                measure(url, {name: path / "1"}, True, args, model_field=str(path / "1"))
            )
        except RuntimeError as exc:
            results[name] = {"error": str(exc)}
        finally:
            server.stop(grace_s=20)
    return results


def measure(
    url: str, models: dict[str, Path], stream: bool, args: argparse.Namespace, model_field: str = ""
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in models:
        if name not in args.models:
            continue
        model = model_field or name
        levels = []
        for concurrency in args.levels:
            level = asyncio.run(
                closed_loop(url, model, concurrency, args.duration, stream, args.drain, args.warmup)
            )
            print(f"  {name} c={concurrency}: {level.to_json()}", flush=True)
            levels.append(level.to_json())
        warmup = 0.0 if args.drain else args.warmup
        results[name] = {"streamed": stream, "warmup_s": warmup, "levels": levels}
        if name == GPT2_SMALL and args.short_among_long and not args.drain:
            check = asyncio.run(short_among_long(url, model, stream))
            print(f"  {name} short among long: {check}", flush=True)
            results[name]["short_among_long"] = check
    return results


def run_static(models: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    """In-process ``generate()`` on static batches of ``c`` requests from the same mix."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria

    class Clock(StoppingCriteria):
        """Records when each decoding step ends; never stops anything."""

        def __init__(self) -> None:
            self.steps: list[float] = []

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            self.steps.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {}
    for name, path in models.items():
        if name not in args.models:
            continue
        tokenizer = AutoTokenizer.from_pretrained(path / "1")
        tokenizer.padding_side = "left"
        model = AutoModelForCausalLM.from_pretrained(path / "1", use_safetensors=True).eval()
        levels = []
        for concurrency in args.levels:
            level = Level(concurrency)
            start = time.time()
            round_index = 0
            while time.time() < start + args.duration:
                batch = [request_mix(c, round_index) for c in range(concurrency)]
                clock = Clock()
                encoded = tokenizer([p for p, _ in batch], return_tensors="pt", padding=True)
                began = time.perf_counter()
                with torch.inference_mode():
                    model.generate(
                        **encoded,
                        max_new_tokens=max(b for _, b in batch),
                        do_sample=False,
                        pad_token_id=tokenizer.eos_token_id,
                        stopping_criteria=[clock],
                    )
                if time.time() > start + args.duration:
                    break
                steps = clock.steps
                level.tokens += sum(b for _, b in batch)
                level.requests += concurrency
                level.ttft_s.extend([steps[0] - began] * concurrency)
                level.itl_s.extend(b - a for a, b in itertools.pairwise(steps))
                level.latency_s.extend(steps[b - 1] - began for _, b in batch)
                round_index += 1
            level.duration_s = time.time() - start
            print(f"  {name} c={concurrency}: {level.to_json()}", flush=True)
            levels.append(level.to_json())
        results[name] = {"streamed": False, "levels": levels}
    return results


def targets(report: dict[str, Any]) -> dict[str, Any]:
    """Issue 24's targets on gpt2-124m, from this run's numbers (None where not measured).

    Throughput comes from the drained runs (every request counted) where there are any:
    against request-level batching at the same thread count, against ``transformers serve``
    each side's best thread count.
    """
    systems = report["systems"]
    drained = "systems_drained" in report
    source = report.get("systems_drained", {}) if drained else systems

    def level(results: dict[str, Any], system: str, concurrency: int) -> dict[str, Any]:
        levels = (results.get(system, {}).get(GPT2_SMALL) or {}).get("levels", [])
        return next((lv for lv in levels if lv["concurrency"] == concurrency), {})

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a and b else None

    def best(prefix: str) -> float | None:
        rates = [
            level(source, name, 32).get("tokens_per_s")
            for name in source
            if name == prefix or name.startswith(prefix + "@")
        ]
        return max(filter(None, rates), default=None)

    ours = level(source, "continuous", 32).get("tokens_per_s")
    request = level(source, "request", 32).get("tokens_per_s")
    peer = max(
        filter(None, [best("transformers-serve"), best("transformers-serve-cb")]), default=None
    )
    short = (systems.get("continuous", {}).get(GPT2_SMALL) or {}).get("short_among_long", {})
    return {
        "throughput_from": "drained runs" if drained else "windowed runs",
        "c32_vs_request_level (>= 2)": ratio(ours, request),
        "c32_best_vs_transformers_serve_best (>= 1)": ratio(best("continuous"), peer),
        "short_among_long_ratio (<= 3)": short.get("ratio"),
        "ttft_p50_c8_over_c1 (<= 2)": ratio(
            level(systems, "continuous", 8).get("ttft_p50_ms"),
            level(systems, "continuous", 1).get("ttft_p50_ms"),
        ),
    }


def _level_table(systems: dict[str, Any], model: str) -> list[str]:
    """One row per system and concurrency."""
    lines = [
        "| system | streamed | warm-up s | c | tokens/s | TTFT p50 ms | TTFT p99 ms"
        " | ITL p50 ms | ITL p99 ms | latency p50 ms | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    keys = (
        "concurrency",
        "tokens_per_s",
        "ttft_p50_ms",
        "ttft_p99_ms",
        "itl_p50_ms",
        "itl_p99_ms",
        "latency_p50_ms",
        "errors",
    )
    for system, results in systems.items():
        entry = results.get(model) if isinstance(results, dict) else None
        if not entry or "levels" not in entry:
            reason = (entry or {}).get("error") or results.get("error", "not run")
            lines.append(f"| {system} | | | | {reason} | | | | | | |")
            continue
        for lv in entry["levels"]:
            row = " | ".join("-" if lv[k] is None else str(lv[k]) for k in keys)
            streamed = "yes" if entry["streamed"] else "no"
            lines.append(f"| {system} | {streamed} | {entry.get('warmup_s', 0)} | {row} |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The report as tables: per model, each system's levels; the short-among-long checks;
    the targets."""
    lines = [
        "# Generation benchmark (`python -m bench.generate`)",
        "",
        f"Machine: {json.dumps(report.get('machine'))}",
        "",
        f"Workload: {json.dumps(report.get('workload'))}",
        "",
        "Runs:",
        *(
            f"- `{run['command']}` ({run['workload']['counting']},"
            f" {run['workload']['threads']} thread(s), {run['machine'].get('date_utc')})"
            for run in report.get("runs", [])
        ),
    ]
    sections = [("", report["systems"])]
    if "systems_drained" in report:
        sections.append((" (drained: every request sent counted)", report["systems_drained"]))
    for title, systems in sections:
        for model in MODELS:
            lines += ["", f"## {model}{title}", "", *_level_table(systems, model)]
    lines += [
        "",
        f"## A short request ({SHORT_BUDGET} tokens) among {LONG_REQUESTS} long ones"
        f" ({LONG_BUDGET} tokens), {GPT2_SMALL}",
        "",
        "| system | alone ms | amid long ms | ratio |",
        "|---|---:|---:|---:|",
    ]
    for system, results in report["systems"].items():
        check = ((results or {}).get(GPT2_SMALL) or {}).get("short_among_long")
        if check:
            lines.append(
                f"| {system} | {check['short_alone_ms']} | {check['short_amid_long_ms']}"
                f" | {check['ratio']} |"
            )
    lines += ["", "## Targets (gpt2-124m)", ""]
    lines += [f"- {name}: {value}" for name, value in targets(report).items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results/generate.json")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per level")
    parser.add_argument(
        "--warmup",
        type=float,
        default=WARMUP_S,
        help="seconds the clients run before each window (not with --drain)",
    )
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--workdir", default="/tmp/bench-generate")
    parser.add_argument("--no-short-among-long", dest="short_among_long", action="store_false")
    parser.add_argument(
        "--threads",
        type=int,
        default=THREADS,
        help="every model's compute threads; results of other than 1 go under <system>@<n>threads",
    )
    parser.add_argument(
        "--drain",
        action="store_true",
        help="count every request sent until all are answered (report key systems_drained)",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite --out's targets and .md; run nothing"
    )
    args = parser.parse_args()
    out = Path(args.out)
    if args.report_only:
        report = json.loads(out.read_text())
        report["targets"] = targets(report)
        out.write_text(json.dumps(report, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(report))
        return
    args.levels = [int(c) for c in args.levels.split(",")]
    args.models = args.models.split(",")
    systems = args.systems.split(",")
    models = build_models(Path(args.workdir) / "models")
    report: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {"systems": {}}
    run = {
        "command": " ".join(["python -m bench.generate", *sys.argv[1:]]),
        "machine": describe_machine(),
        "workload": {
            "threads": args.threads,
            "prompts": list(PROMPTS),
            "max_tokens_cycle": list(BUDGETS),
            "duration_s_per_level": args.duration,
            "warmup_s_per_level": 0.0 if args.drain else args.warmup,
            "levels": args.levels,
            "counting": "drained" if args.drain else "window",
            "greedy": True,
        },
    }
    report.setdefault("runs", []).append(run)
    if not args.drain and args.threads == THREADS:  # the main run's facts at the top
        report.update(run)
    runners = {
        "continuous": lambda: run_service(models, "continuous", True, args),
        "continuous-between": lambda: run_service(
            models, "continuous", True, args, prefill="between_steps"
        ),
        "continuous-plain": lambda: run_service(models, "continuous", False, args),
        "request": lambda: run_service(models, "request", False, args),
        "transformers-serve": lambda: run_transformers_serve(models, False, args),
        "transformers-serve-cb": lambda: run_transformers_serve(models, True, args),
        "static": lambda: run_static(models, args),
    }
    for system in systems:
        print(f"{system}:", flush=True)
        results = report.setdefault("systems_drained" if args.drain else "systems", {})
        key = system if args.threads == THREADS else f"{system}@{args.threads}threads"
        try:
            results.setdefault(key, {}).update(runners[system]())
        except RuntimeError as exc:
            results[key] = {"error": str(exc)}
            print(f"  {exc}", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        report["targets"] = targets(report)
        out.write_text(json.dumps(report, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
