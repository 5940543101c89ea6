"""The gRPC load generator against a real loopback gRPC server: counts, errors, the guard."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from bench import grpc_load

METHOD = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    """A loopback gRPC server that echoes ModelInfer's bytes, or fails when they say so."""
    ready = threading.Event()
    state: dict = {}

    async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if request == b"fail":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "asked to fail")
        return request

    async def serve() -> None:
        server = grpc.aio.server()
        method = grpc.unary_unary_rpc_method_handler(handler)
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "inference.GRPCInferenceService", {"ModelInfer": method}
                ),
            )
        )
        state["port"] = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        state["stop"] = asyncio.Event()
        ready.set()
        await state["stop"].wait()
        await server.stop(0)

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    ready.wait(10)
    yield state["port"]
    loop.call_soon_threadsafe(state["stop"].set)
    thread.join(10)


def test_a_run_counts_every_call_and_its_latency(server: int) -> None:
    request = grpc_load.Request(f"127.0.0.1:{server}", METHOD, b"hello")
    result = grpc_load.run(request, concurrency=4, duration_s=1)
    assert result["ok"], result
    assert result["requests"] > 0 and result["errors"] == 0 and result["non_ok"] == {}
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]
    assert result["client_cpu_s"] > 0
    assert result["request"]["body_bytes"] == 5


def test_failed_calls_are_counted_by_status_code(server: int) -> None:
    request = grpc_load.Request(f"127.0.0.1:{server}", METHOD, b"fail")
    result = grpc_load.run(request, concurrency=2, duration_s=1)
    assert not result["ok"]
    assert set(result["non_ok"]) == {"INVALID_ARGUMENT"}
    assert result["non_ok_sample"] == "asked to fail"
    assert "error(s)" in result["failure"]


def test_loopback_only() -> None:
    grpc_load.check_loopback("127.0.0.1:9000")
    grpc_load.check_loopback("localhost:9000")
    grpc_load.check_loopback("[::1]:9000")
    for target in ("10.0.0.1:9000", "example.com:9000", "0.0.0.0:9000"):
        with pytest.raises(ValueError, match="non-loopback"):
            grpc_load.check_loopback(target)


def test_infer_request_is_what_tritonclient_sends() -> None:
    body = grpc_load.infer_request("digits", {"pixels": np.zeros((1, 64), dtype=np.float32)})
    message = service_pb2.ModelInferRequest.FromString(body)
    assert message.model_name == "digits"
    (tensor,) = message.inputs
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("pixels", "FP32", [1, 64])
    assert message.raw_input_contents[0] == bytes(256)
