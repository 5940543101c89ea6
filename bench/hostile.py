"""Hostile traffic beside the load test's good traffic (``bench/load_test.py --hostile``).

Issue 25's mix, each kind in a loop of its own until the load ends:

- ``stalled_uploads``: connections that declare a body, send all of it but its last byte and
  stall; the ingress must answer 408 (``ingress.body_idle_timeout_s``) and let the bytes go.
- ``oversized_grpc``: V2 ``ModelInfer`` messages over the transport's cap
  (``RAY_SERVE_GRPC_MAX_MESSAGE_SIZE``), without a token; refused with RESOURCE_EXHAUSTED
  before they are read.
- ``deep_parameters``: V2 requests whose ``parameters`` nest lists 500 deep; 400 alone.
- ``departed_clients``: completions whose clients leave after 0.2 s; the replica must stop
  generating for them.
- ``broken_version``: a corrupt ``digits`` version written into the polled repository; the
  model keeps serving its last good version and reports the broken one.

``ProcessMemory`` samples the resident memory of every serving process (Ray's workers and
actors, HAProxy) through the run: each one's start and peak.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STALLED_UPLOADS = 8
STALLED_BYTES = 4 * 1024 * 1024  # declared per upload; all but the last byte is sent
OVERSIZED_GRPC_BYTES = 80 * 1024 * 1024  # past make run's 64 MiB cap
DEEP_PARAMETERS = 500
SERVING_PROCESS_MARKERS = ("ray::", "haproxy", "raylet", "gcs_server")


@dataclass
class Tally:
    """Outcomes of one kind of hostile request."""

    codes: Counter = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)

    def add(self, code: Any, text: str = "") -> None:
        self.codes[str(code)] += 1
        if text and len(self.samples) < 3 and text[:200] not in self.samples:
            self.samples.append(text[:200])

    def to_json(self) -> dict[str, Any]:
        return {"codes": dict(sorted(self.codes.items())), "samples": self.samples}


async def stalled_uploads(host: str, port: int, until: float, tally: Tally) -> None:
    """``STALLED_UPLOADS`` connections at a time, each stalled one byte short; a new one as
    soon as the server lets one go."""

    async def one() -> None:
        while time.monotonic() < until:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(
                    b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: bench\r\n"
                    b"Content-Type: application/json\r\n"
                    + f"Content-Length: {STALLED_BYTES}\r\n\r\n".encode()
                )
                writer.write(b" " * (STALLED_BYTES - 1))
                await writer.drain()
                status = await asyncio.wait_for(reader.readline(), timeout=120)
                parts = status.split()
                tally.add(int(parts[1]) if len(parts) > 1 else "closed", status.decode("latin-1"))
            except TimeoutError:
                tally.add("hung")
            except OSError as exc:
                tally.add("connection", f"{type(exc).__name__}: {exc}")
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    await asyncio.gather(*(one() for _ in range(STALLED_UPLOADS)))


def oversized_grpc(target: str, until: float, tally: Tally) -> None:
    """Oversized ``ModelInfer`` calls, one at a time, on a thread (grpcio is blocking)."""
    import grpc

    body = _oversized_infer_request()
    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", -1)]) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        while time.monotonic() < until:
            try:
                call(body, timeout=30)
                tally.add("OK")
            except grpc.RpcError as exc:
                tally.add(exc.code().name, exc.details() or "")
            time.sleep(1.0)


def _oversized_infer_request() -> bytes:
    import numpy as np

    from bench.grpc_load import infer_request

    rows = OVERSIZED_GRPC_BYTES // (64 * 4)
    return infer_request("digits", {"pixels": np.zeros((rows, 64), dtype=np.float32)})


def deep_parameters_body() -> bytes:
    """A V2 digits request whose one parameter nests lists ``DEEP_PARAMETERS`` deep."""
    row = {"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}
    nested = "[" * DEEP_PARAMETERS + "]" * DEEP_PARAMETERS
    head = json.dumps({"inputs": [row]})[:-1]
    return (head + ', "parameters": {"deep": ' + nested + "}}").encode()


async def deep_parameters(session: Any, url: str, until: float, tally: Tally) -> None:
    body = deep_parameters_body()
    headers = {"Content-Type": "application/json"}
    while time.monotonic() < until:
        async with session.post(f"{url}/v2/models/digits/infer", data=body, headers=headers) as r:
            tally.add(r.status, await r.text())
        await asyncio.sleep(0.2)


async def departed_clients(session: Any, url: str, until: float, tally: Tally) -> None:
    import aiohttp

    body = {"model": "tiny-gpt2", "prompt": "A long story", "max_tokens": 200}
    while time.monotonic() < until:
        try:
            async with session.post(
                f"{url}/v1/completions", json=body, timeout=aiohttp.ClientTimeout(total=0.2)
            ) as response:
                tally.add(response.status, await response.text())
        except TimeoutError:
            tally.add("left")
        await asyncio.sleep(0.3)


async def broken_version(
    session: Any, url: str, repository: Path, after_s: float, until: float
) -> dict[str, Any]:
    """Write a corrupt digits version ``after_s`` into the run; at the end, what the model's
    status says of each version."""
    await asyncio.sleep(after_s)
    versions = [int(p.name) for p in (repository / "digits").iterdir() if p.name.isdigit()]
    broken = repository / "digits" / str(max(versions) + 1)
    broken.mkdir()
    (broken / "model.keras").write_bytes(b"not a keras file")
    await asyncio.sleep(max(0.0, until - time.monotonic()))
    async with session.get(f"{url}/v1/models/digits") as response:
        status = await response.json(content_type=None)
    return {"written": str(broken), "version": int(broken.name), "status": status}


class ProcessMemory:
    """The resident memory of every serving process, sampled on a thread: start and peak."""

    def __init__(self, root: int | None = None, every_s: float = 1.0) -> None:
        self.root = root
        self.every_s = every_s
        self.start: dict[int, tuple[str, int]] = {}
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcessMemory:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def _sample(self) -> None:
        for pid, name, rss in serving_processes(self.root):
            self.start.setdefault(pid, (name, rss))
            self.peak[pid] = max(self.peak.get(pid, 0), rss)

    def report(self) -> list[dict[str, Any]]:
        """Each process: name, RSS at the start, peak, growth (MiB), largest growth first."""
        rows = []
        for pid, (name, start) in self.start.items():
            peak = self.peak.get(pid, start)
            rows.append(
                {
                    "pid": pid,
                    "name": name,
                    "start_mib": round(start / 2**20, 1),
                    "peak_mib": round(peak / 2**20, 1),
                    "growth_mib": round((peak - start) / 2**20, 1),
                }
            )
        return sorted(rows, key=lambda r: -r["growth_mib"])


def serving_processes(root: int | None = None) -> list[tuple[int, str, int]]:
    """(pid, name, resident bytes) of the server's processes: ``root`` (``serve run``'s pid)
    and its descendants, or without it every Ray and HAProxy process on this machine."""
    found = []
    page = os.sysconf("SC_PAGE_SIZE")
    parents: dict[int, int] = {}
    rows = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            resident = int((entry / "statm").read_text().split()[1]) * page
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents[int(entry.name)] = parent
        rows.append((int(entry.name), command, resident))
    for pid, command, resident in rows:
        if root is None:
            if not any(marker in command for marker in SERVING_PROCESS_MARKERS):
                continue
        elif not _descends(pid, root, parents):
            continue
        found.append((pid, command.split(" ")[0][:60], resident))
    return found


def _descends(pid: int, root: int, parents: dict[int, int]) -> bool:
    seen = set()
    while pid not in seen and pid > 1:
        if pid == root:
            return True
        seen.add(pid)
        pid = parents.get(pid, 0)
    return False


def write_config(out: Path, repository: Path, poll_interval_s: float = 2.0) -> Path:
    """``serve_config.yaml`` with ``digits`` served from a copy of its repository under
    ``repository``, polled every ``poll_interval_s``: the load test writes a broken version
    there. Other models keep their paths (run ``serve run`` from the repository root)."""
    import shutil

    import yaml

    from bench.models import REPO_ROOT

    config = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    digits = repository / "digits"
    if digits.exists():
        shutil.rmtree(digits)
    shutil.copytree(REPO_ROOT / "model_repository" / "digits", digits)
    app = next(a for a in config["applications"] if a["name"] == "digits")
    app["args"].update(uri=str(digits), poll_interval_s=poll_interval_s)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def main() -> None:
    """``python -m bench.hostile --out DIR``: write DIR/serve_config.yaml and DIR/repository."""
    import argparse

    parser = argparse.ArgumentParser(description=write_config.__doc__)
    parser.add_argument("--out", type=Path, default=Path("/tmp/serve-app-hostile"))
    args = parser.parse_args()
    config = write_config(args.out / "serve_config.yaml", args.out / "repository")
    print(config)


if __name__ == "__main__":
    main()
