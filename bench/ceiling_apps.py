"""Serve applications that do no work, to measure what the serving path costs by itself.

``python -m bench.ceilings`` runs each under ``serve run`` with the fast-path environment,
as ``make run`` serves the real fleet:

- ``fastapi_noop``: an ingress whose FastAPI route answers a constant body;
- ``asgi_noop``: an ingress whose own ASGI callable answers the same constant body;
- ``roundtrip``: an ingress that, asked over HTTP, times a loop of handle calls to a no-op
  model deployment carrying 1 or many requests per call (digits-shaped rows).

No framework is imported: these bound what any design of the request path can reach.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import parse_qs

import numpy as np
from fastapi import FastAPI
from fastapi.responses import Response
from ray import serve

CONSTANT = b'{"predictions":[[0.5,0.25,0.125,0.0625,0.03125,0.0,0.0,0.0,0.0,0.0]]}'
ROW = np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 64)
ANSWER = np.linspace(0, 1, 10, dtype=np.float32).reshape(1, 10)


async def _drain(receive: Any) -> None:
    """Read the whole request body, as a real route would."""
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)


async def _send(send: Any, body: bytes, status: int = 200) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def constant_asgi(scope: dict, receive: Any, send: Any) -> None:
    """An ASGI app that answers every request with ``CONSTANT``."""
    if scope["type"] != "http":
        return
    await _drain(receive)
    await _send(send, CONSTANT)


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=1000)
@serve.ingress()
class AsgiNoop:
    """No-op ingress, raw ASGI."""

    def __serve_build_asgi_app__(self) -> Any:
        return constant_asgi


fastapi_app = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=1000)
@serve.ingress(fastapi_app)
class FastAPINoop:
    """No-op ingress, one FastAPI route."""

    @fastapi_app.post("/{path:path}")
    async def answer(self, path: str) -> Response:
        return Response(CONSTANT, media_type="application/json")


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
class Echo:
    """A model deployment that computes nothing: one answer row per request row."""

    async def many(self, rows: list[np.ndarray]) -> list[np.ndarray]:
        return [ANSWER for _ in rows]

    async def cpu_seconds(self) -> float:
        return time.process_time()


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=1000)
@serve.ingress()
class RoundTrip:
    """``GET /?per_call=32&calls=2000&concurrency=1`` times that many handle calls."""

    def __init__(self, echo: Any) -> None:
        self.echo = echo

    def __serve_build_asgi_app__(self) -> Any:
        # A plain coroutine function: uvicorn takes a bound method for an ASGI2 app.
        async def app(scope: dict, receive: Any, send: Any) -> None:
            await self.asgi(scope, receive, send)

        return app

    async def asgi(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await _drain(receive)
        query = {k: int(v[0]) for k, v in parse_qs(scope["query_string"].decode()).items()}
        result = await self.measure(
            query.get("per_call", 1), query.get("calls", 1000), query.get("concurrency", 1)
        )
        await _send(send, json.dumps(result).encode())

    async def measure(self, per_call: int, calls: int, concurrency: int) -> dict[str, Any]:
        """``calls`` handle calls of ``per_call`` rows, ``concurrency`` at a time."""
        rows = [ROW] * per_call
        for _ in range(20):  # warm up the router and the connection
            await self.echo.many.remote(rows)
        echo_before = await self.echo.cpu_seconds.remote()
        cpu_before, started = time.process_time(), time.perf_counter()
        latencies: list[float] = []
        remaining = calls

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter()
                answers = await self.echo.many.remote(rows)
                latencies.append(time.perf_counter() - t0)
                assert len(answers) == per_call

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
        caller_cpu = time.process_time() - cpu_before
        echo_cpu = await self.echo.cpu_seconds.remote() - echo_before
        latencies.sort()
        return {
            "per_call": per_call,
            "calls": calls,
            "concurrency": concurrency,
            "seconds": round(wall, 3),
            "calls_per_s": round(calls / wall, 1),
            "requests_per_s": round(calls * per_call / wall, 1),
            "call_p50_ms": round(1000 * latencies[len(latencies) // 2], 3),
            "caller_cpu_ms_per_call": round(1000 * caller_cpu / calls, 3),
            "callee_cpu_ms_per_call": round(1000 * echo_cpu / calls, 3),
            "cpu_ms_per_request": round(1000 * (caller_cpu + echo_cpu) / (calls * per_call), 4),
        }


asgi_noop = AsgiNoop.bind()
fastapi_noop = FastAPINoop.bind()
roundtrip = RoundTrip.bind(Echo.bind())
