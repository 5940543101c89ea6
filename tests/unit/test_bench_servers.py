"""The comparison's server descriptions: this service as `make run` serves it, and the V2
gRPC calls of this service and Triton. Pure code: nothing is started."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
import yaml

from bench.models import DIGIT_ROW, REPO_ROOT, SENTENCE
from bench.servers import SERVERS
from serve_app.fast_path import FAST_PATH_ENV


def test_this_service_runs_the_default_fleet_on_its_configured_ports(tmp_path: Path) -> None:
    ours = SERVERS["serve-app"]
    config = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    assert ours.port == config["http_options"]["port"]
    assert ours.grpc_port == config["grpc_options"]["port"]
    assert ours.argv("digits", tmp_path)[1:] == ["run", "serve_config.yaml"]
    env = ours.env("digits")
    assert {k: env[k] for k in FAST_PATH_ENV} == FAST_PATH_ENV
    assert env["RAY_TMPDIR"] == "/tmp/ray-bench" and "RAY_ADDRESS" not in env
    assert {ours.port, ours.grpc_port} <= set(ours.ports())
    assert "max_batch_size" in ours.settings("minilm")["batching"]


@pytest.mark.parametrize(
    ("server", "model", "shape"),
    [
        ("serve-app", "digits", [1, 64]),
        ("serve-app", "minilm", [1]),
        ("triton", "digits", [1, 64]),
        ("triton", "minilm", [1, 1]),  # Triton's batched BYTES input of shape (1,)
    ],
)
def test_grpc_endpoints_send_one_raw_instance(server: str, model: str, shape: list) -> None:
    (endpoint,) = SERVERS[server].grpc_endpoints(model)
    request = triton.service_pb2.ModelInferRequest.FromString(endpoint.body())
    assert request.model_name == model and list(request.inputs[0].shape) == shape
    assert len(request.raw_input_contents) == 1
    assert endpoint.describe()["inputs"][0]["shape"] == shape
    if model == "digits":
        sent = np.frombuffer(request.raw_input_contents[0], dtype=np.float32)
        assert sent.tolist() == pytest.approx(DIGIT_ROW)
    else:
        assert SENTENCE.encode() in request.raw_input_contents[0]


def test_grpc_answer_is_read_from_raw_output_contents() -> None:
    (endpoint,) = SERVERS["triton"].grpc_endpoints("digits")
    row = np.arange(10, dtype=np.float32).reshape(1, 10)
    response = triton.service_pb2.ModelInferResponse(model_name="digits")
    response.outputs.add(name="probabilities", datatype="FP32", shape=[1, 10])
    response.raw_output_contents.append(row.tobytes())
    assert endpoint.extract(response.SerializeToString()) == row[0].tolist()
    empty = triton.service_pb2.ModelInferResponse(model_name="digits").SerializeToString()
    with pytest.raises(KeyError):
        endpoint.extract(empty)
