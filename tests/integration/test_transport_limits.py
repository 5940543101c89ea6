"""What the transports refuse before a request is held: a gRPC message over Serve's cap
(``RAY_SERVE_GRPC_MAX_MESSAGE_SIZE``, set before Ray starts as `make run` sets it), and an
HTTP upload that stops short of its Content-Length (408 after ``body_idle_timeout_s``).

Real Ray Serve through its Python proxy (the session's), a real grpc client, raw sockets.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

import grpc
import numpy as np
import psutil
import pytest
import requests
from tritonclient.grpc import service_pb2, service_pb2_grpc

from serve_app.fast_path import GRPC_MAX_MESSAGE_BYTES, GRPC_MAX_MESSAGE_VAR
from tests.helpers import TFSERVING_TESTDATA, wait_for
from tests.integration.conftest import deploy_and_wait, undeploy

pytestmark = pytest.mark.integration

APP = "transport"
MiB = 1024 * 1024
HALF_PLUS_TWO = str(TFSERVING_TESTDATA / "saved_model_half_plus_two_cpu")
MAX_REQUEST = 1 * MiB
STALLS = 4
# Room for STALLS bodies one byte short of the limit, and a small request beside them.
MAX_BUFFERED = STALLS * MAX_REQUEST + 4096


@pytest.fixture(scope="module")
def app(serve_url: str) -> Iterator[str]:
    deploy_and_wait(
        APP,
        {
            "models": [
                {
                    "name": "half",
                    "framework": "tensorflow",
                    "uri": HALF_PLUS_TWO,
                    "resources": {"num_cpus": 0.25},
                }
            ],
            "ingress": {
                "num_cpus": 0.25,
                "max_request_bytes": MAX_REQUEST,
                "max_buffered_bytes": MAX_BUFFERED,
            },
        },
    )
    yield f"{serve_url}/{APP}"
    undeploy(APP)


def _predict(url: str, padding: int = 0) -> requests.Response:
    # JSON allows whitespace: a body of any size that the model answers.
    body = b'{"instances": [1.0]}' + b" " * padding
    headers = {"content-type": "application/json"}
    return requests.post(f"{url}/v1/models/half:predict", data=body, headers=headers, timeout=60)


def _stalled_upload(url: str, declared: int) -> socket.socket:
    """A client that sends its headers and all but one byte of its body, then waits."""
    address = urlparse(url)
    sock = socket.create_connection((address.hostname, address.port), timeout=60)
    head = (
        f"POST {address.path}/v1/models/half:predict HTTP/1.1\r\nHost: {address.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    )
    sock.sendall(head.encode() + b"{" + b" " * (declared - 2))
    return sock


def _answer(sock: socket.socket) -> tuple[int, bytes]:
    response = http.client.HTTPResponse(sock, method="POST")
    response.begin()  # the socket's timeout (60 s) bounds the wait
    return response.status, response.read()


def _answered(sock: socket.socket) -> bool:
    """Whether the ingress has answered this stalled upload already (without reading it)."""
    sock.setblocking(False)
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False
    finally:
        sock.settimeout(60)


def test_a_stalled_upload_gets_408_and_lets_go_of_its_bytes(app: str) -> None:
    stalled = [_stalled_upload(app, MAX_REQUEST) for _ in range(STALLS)]

    def budget_held() -> bool:
        # A probe that reached the ingress before a stalled upload took that upload's room
        # (the upload was refused with 503, and the probe answered): send that upload again.
        for index, sock in enumerate(stalled):
            if _answered(sock):
                sock.close()
                stalled[index] = _stalled_upload(app, MAX_REQUEST)
        return _predict(app, MAX_REQUEST - 64).status_code == 503

    try:
        # While they hold the budget, a large body is refused (so they reached the ingress)...
        wait_for(budget_held, 30, "the stalled uploads to hold the ingress's body budget")
        # ...and a small one is answered.
        assert _predict(app).json() == {"predictions": [2.5]}
        for sock in stalled:
            status, body = _answer(sock)
            assert status == 408, body
            message = json.loads(body)["error"]
            assert "ingress.body_idle_timeout_s" in message
            assert f"{MAX_REQUEST - 1} of {MAX_REQUEST} bytes" in message
    finally:
        for sock in stalled:
            sock.close()
    # Their bytes were given back: a body of the largest size fits again.
    assert _predict(app, MAX_REQUEST - 64).json() == {"predictions": [2.5]}


def _proxy_rss() -> int:
    """The resident memory of Serve's proxy actor processes on this machine (gRPC's server)."""
    total = 0
    for process in psutil.process_iter(["cmdline"]):
        if "ProxyActor" in " ".join(process.info["cmdline"] or []):
            total += process.memory_info().rss
    return total


def test_a_grpc_message_over_the_cap_is_refused_before_it_is_read(app: str, grpc_port: int) -> None:
    size = 200 * MiB  # what the review sent: 2 GiB was the default cap
    request = service_pb2.ModelInferRequest(model_name="half")
    request.inputs.add(name="x", datatype="FP32", shape=[size // 4])
    request.raw_input_contents.append(np.zeros(size // 4, np.float32).tobytes())
    metadata = (("application", APP),)
    with grpc.insecure_channel(
        f"127.0.0.1:{grpc_port}", options=[("grpc.max_send_message_length", -1)]
    ) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        before = _proxy_rss()
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request, metadata=metadata, timeout=120)
        grown = _proxy_rss() - before
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # gRPC's own refusal, from the message's length prefix, not ours after reading it.
        assert "larger than max" in refused.value.details(), refused.value.details()
        assert str(GRPC_MAX_MESSAGE_BYTES) in refused.value.details()
        # Not held in memory: the old default cap (2 GiB) read all 200 MiB first.
        assert grown < size // 2, f"the proxy grew by {grown} bytes"
        # The channel and the server still serve a call of ordinary size.
        small = service_pb2.ModelInferRequest(model_name="half")
        small.inputs.add(name="x", datatype="FP32", shape=[1])
        small.raw_input_contents.append(np.float32([1.0]).tobytes())
        answer = stub.ModelInfer(small, metadata=metadata, timeout=60)
        assert np.frombuffer(answer.raw_output_contents[0], np.float32).tolist() == [2.5]
    assert os.environ[GRPC_MAX_MESSAGE_VAR] == str(GRPC_MAX_MESSAGE_BYTES)  # as make run sets it
