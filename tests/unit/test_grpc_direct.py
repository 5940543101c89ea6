"""The ingress replica's direct gRPC calls (``serve_app/grpc/direct.py``) as pure glue: which
servers get them, what a call does around the ingress's method. The real path (HAProxy, the
replica's own gRPC server) is the e2e test's (``tests/e2e/test_fast_path_grpc.py``)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from serve_app.grpc.direct import DirectCalls
from serve_app.grpc.services import DEADLINE_KEY, DeadlineContext


class Answer:
    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def SerializeToString(self) -> bytes:
        return self.payload


class Ingress:
    """An ingress with one RPC; it records the context it was given."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.seen: list[Any] = []

    async def ModelInfer(self, request: bytes, grpc_context: Any) -> Answer:
        self.seen.append(grpc_context)
        if self.fail:
            raise RuntimeError("boom")
        return Answer(b"answer to " + request)


class Wrapper:
    def __init__(self, ingress: Ingress) -> None:
        self.user_callable = ingress


class Metrics:
    def __init__(self) -> None:
        self.ongoing = 0
        self.peak = 0

    def inc_num_ongoing_requests(self, metadata: Any) -> None:
        self.ongoing += 1
        self.peak = max(self.peak, self.ongoing)

    def dec_num_ongoing_requests(self, metadata: Any) -> None:
        self.ongoing -= 1


class Replica:
    def __init__(self, ingress: Ingress) -> None:
        self._user_callable_wrapper = Wrapper(ingress)
        self._metrics_manager = Metrics()

    def handler_factory(self, service_method: str, streaming_type: Any) -> Any:
        raise AssertionError("not called here")


class Context:
    """grpc.aio's servicer context, as much as the call uses."""

    def __init__(self, metadata: tuple = (), remaining: float | None = 5.0) -> None:
        self.metadata = metadata
        self.remaining = remaining
        self.trailers: tuple = ()

    def invocation_metadata(self) -> tuple:
        return self.metadata

    def time_remaining(self) -> float | None:
        return self.remaining

    def set_trailing_metadata(self, trailers: tuple) -> None:
        self.trailers = trailers


def test_only_a_replicas_own_server_gets_direct_calls() -> None:
    replica = Replica(Ingress())
    assert DirectCalls.for_factory(replica.handler_factory) is not None

    class Proxy:  # Serve's Python proxy: no replica behind its factory
        def handler_factory(self, service_method: str, streaming_type: Any) -> Any: ...

    assert DirectCalls.for_factory(Proxy().handler_factory) is None
    assert DirectCalls.for_factory(lambda **_: None) is None


def test_a_call_reaches_the_method_of_its_rpc_with_deadline_and_request_id() -> None:
    ingress = Ingress()
    replica = Replica(ingress)
    direct = DirectCalls.for_factory(replica.handler_factory)
    assert direct is not None
    unary = direct.unary("/inference.GRPCInferenceService/ModelInfer", DeadlineContext)
    given = Context((("request_id", "r-9"), (DEADLINE_KEY, "forged")))
    assert asyncio.run(unary(b"x", given)) == b"answer to x"
    assert given.trailers == (("request_id", "r-9"),)
    metadata = dict(ingress.seen[0].invocation_metadata())
    assert metadata["request_id"] == "r-9"
    assert float(metadata[DEADLINE_KEY]) > 0  # the call's own deadline, the client's dropped
    made = Context()
    asyncio.run(unary(b"y", made))
    (key, value), *_ = made.trailers
    assert key == "request_id" and dict(ingress.seen[1].invocation_metadata())[key] == value
    assert replica._metrics_manager.ongoing == 0 and replica._metrics_manager.peak == 1


def test_ongoing_requests_are_counted_down_when_the_method_fails() -> None:
    replica = Replica(Ingress(fail=True))
    direct = DirectCalls.for_factory(replica.handler_factory)
    assert direct is not None
    unary = direct.unary("/inference.GRPCInferenceService/ModelInfer", DeadlineContext)
    with pytest.raises(RuntimeError):
        asyncio.run(unary(b"x", Context()))
    assert replica._metrics_manager.ongoing == 0
