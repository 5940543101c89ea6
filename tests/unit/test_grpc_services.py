"""The gRPC services as Serve registers them: raw request bytes in, the call's deadline added
to the metadata, only the served RPCs offered. Driven with a real grpc.aio server and client
(no Ray); the integration and e2e tests run them inside Serve."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from serve_app.grpc import services

ROOT = Path(__file__).resolve().parents[2]


def test_serve_config_registers_every_service() -> None:
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    assert config["grpc_options"]["grpc_servicer_functions"] == services.SERVICER_FUNCTIONS


class Recorder:
    """A servicer with every RPC: answers with what it saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any, dict, float | None]] = []

    def __getattr__(self, method: str) -> Any:
        async def call(request: Any, context: Any) -> Any:
            metadata = dict(context.invocation_metadata())
            self.seen.append((method, request, metadata, context.time_remaining()))
            return Echo(request)

        return call


class Echo:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:
        return self.data


class FactoryServer:
    """Stands in for Serve's gRPCGenericServer: handlers come from a factory, which the
    services wrap to pass the deadline on."""

    def __init__(self, server: grpc.aio.Server, servicer: Recorder) -> None:
        self.server = server

        def factory(service_method: str, streaming_type: Any) -> Any:
            method = service_method.rsplit("/", 1)[-1]
            return getattr(servicer, method)

        self.service_handler_factory = factory

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        # As Serve does: every unary handler's behaviour comes from the factory.
        (handler,) = handlers
        for path, method_handler in list(handler._method_handlers.items()):
            unary = self.service_handler_factory(
                service_method=path, streaming_type=type("T", (), {"name": "UNARY_UNARY"})()
            )
            handler._method_handlers[path] = method_handler._replace(unary_unary=unary)
        self.server.add_generic_rpc_handlers(handlers)


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def serve_and_call(calls: list[tuple[str, bytes, tuple, float | None]]) -> tuple:
    recorder = Recorder()
    server = grpc.aio.server()
    wrapped = FactoryServer(server, recorder)
    services.add_PredictionServiceServicer_to_server(recorder, wrapped)
    services.add_ModelServiceServicer_to_server(recorder, wrapped)
    services.add_GRPCInferenceServiceServicer_to_server(recorder, wrapped)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    results = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for path, body, metadata, timeout in calls:
                call = channel.unary_unary(path)
                try:
                    results.append(await call(body, metadata=metadata, timeout=timeout))
                except grpc.aio.AioRpcError as error:
                    results.append(error.code())
    finally:
        await server.stop(0)
    return results, recorder.seen


def test_requests_arrive_as_bytes_with_the_deadline_in_the_metadata() -> None:
    before = time.time()
    results, seen = run(
        serve_and_call(
            [
                ("/tensorflow.serving.PredictionService/Predict", b"\x01raw", (), 30.0),
                # A client cannot set the deadline key itself.
                (
                    "/inference.GRPCInferenceService/ModelInfer",
                    b"x",
                    ((services.DEADLINE_KEY, "1"),),
                    None,
                ),
            ]
        )
    )
    assert results == [b"\x01raw", b"x"]
    (method, request, metadata, remaining), (method2, _, metadata2, remaining2) = seen
    assert (method, request) == ("Predict", b"\x01raw")
    deadline = float(metadata[services.DEADLINE_KEY])
    # gRPC computes the time remaining from its own cached clock, which may lag time.time()
    # by a fraction of a second: the deadline can land that much past the client's.
    assert before + 25 < deadline <= time.time() + 30 + 1
    assert remaining is not None
    assert method2 == "ModelInfer" and remaining2 is None
    assert services.DEADLINE_KEY not in metadata2


@pytest.mark.parametrize(
    "path",
    [
        "/tensorflow.serving.ModelService/HandleReloadConfigRequest",
        "/inference.GRPCInferenceService/ModelStreamInfer",
        "/inference.GRPCInferenceService/RepositoryIndex",
    ],
)
def test_rpcs_not_served_are_unimplemented(path: str) -> None:
    results, seen = run(serve_and_call([(path, b"", (), 10.0)]))
    assert results == [grpc.StatusCode.UNIMPLEMENTED] and seen == []


def test_every_served_rpc_is_an_ingress_method() -> None:
    from serve_app.ingress import Ingress

    cls = Ingress.func_or_class
    for methods in services.METHODS.values():
        for method in methods:
            assert callable(getattr(cls, method)), method
