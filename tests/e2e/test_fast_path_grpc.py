"""gRPC on `make run`'s fast path: HAProxy forwards to the ingress replica's own gRPC server,
whose calls go straight to the ingress's methods (``serve_app/grpc/direct.py``), not
through Serve's per-request wrapper. What that wrapper gave a client is still there: the
answers and status codes, Serve's ``request_id`` trailer, deadlines; and concurrent calls
are coalesced as REST requests are."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2

from tests.e2e.conftest import GRPC_PORT
from tests.e2e.test_fast_path import coalescing_by_replica

TARGET = f"127.0.0.1:{GRPC_PORT}"
INFER = "/inference.GRPCInferenceService/ModelInfer"
TIMEOUT = 60


def infer_request(model: str, rows: int = 1) -> bytes:
    """A V2 ``ModelInferRequest`` for ``digits`` (``pixels`` FP32 [rows, 64]), raw tensors."""
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="pixels", datatype="FP32", shape=[rows, 64])
    request.raw_input_contents.append(np.zeros((rows, 64), np.float32).tobytes())
    return request.SerializeToString()


def call(channel: grpc.Channel, body: bytes, **kwargs):
    """One raw ``ModelInfer``: (the answer's bytes, the call)."""
    method = channel.unary_unary(INFER, request_serializer=None, response_deserializer=None)
    return method.with_call(body, timeout=kwargs.pop("timeout", TIMEOUT), **kwargs)


def test_tritonclient_infers_on_the_fast_path(served_fleet: None) -> None:
    client = triton.InferenceServerClient(TARGET)
    pixels = triton.InferInput("pixels", [2, 64], "FP32")
    pixels.set_data_from_numpy(np.zeros((2, 64), np.float32))
    result = client.infer("digits", [pixels], request_id="e2e-1", client_timeout=TIMEOUT)
    assert result.get_response().id == "e2e-1"
    assert result.as_numpy("probabilities").shape == (2, 10)
    assert client.is_model_ready("digits") and client.is_server_live()


def test_serves_request_id_trailer_is_kept(served_fleet: None) -> None:
    with grpc.insecure_channel(TARGET) as channel:
        _, given = call(channel, infer_request("digits"), metadata=(("request_id", "abc-7"),))
        _, made = call(channel, infer_request("digits"))
    assert ("request_id", "abc-7") in given.trailing_metadata()
    ids = [v for k, v in made.trailing_metadata() if k == "request_id"]
    assert len(ids) == 1 and re.fullmatch(r"[0-9a-f]{16}-\d+", ids[0]), ids


def test_errors_and_deadlines_keep_their_status_codes(served_fleet: None) -> None:
    with grpc.insecure_channel(TARGET) as channel:
        try:
            call(channel, infer_request("no-such-model"))
            raise AssertionError("an unknown model was answered")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
            assert "model 'no-such-model' not found" in error.details()
        try:
            call(channel, b"\xff\xff not a message")
            raise AssertionError("a message that does not parse was answered")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        try:  # a deadline no model call can meet: the client's own, or ours just before it
            call(channel, infer_request("digits", rows=4096), timeout=0.001)
            raise AssertionError("a 1 ms deadline was met")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The connection and the ingress go on serving.
        answer, _ = call(channel, infer_request("digits"))
    assert service_pb2.ModelInferResponse.FromString(answer).model_name == "digits"


def test_concurrent_grpc_calls_are_coalesced_on_the_fast_path(served_fleet: None) -> None:
    before = coalescing_by_replica("digits")
    with grpc.insecure_channel(TARGET) as channel, ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda _: call(channel, infer_request("digits"))[0], range(256)))
    after = coalescing_by_replica("digits")
    assert all(service_pb2.ModelInferResponse.FromString(a).outputs for a in answers)
    requests_sent = sum(after[r]["requests"] - before[r]["requests"] for r in after)
    calls_made = sum(after[r]["calls"] - before[r]["calls"] for r in after)
    assert requests_sent == 256
    assert calls_made < 256
