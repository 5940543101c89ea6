"""The comparison's server descriptions: this service as `make run` serves it, the V2 gRPC
calls of this service and Triton, and this service's TF Serving gRPC Predict for digits.
Pure code: nothing is started."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tritonclient.grpc as triton
import yaml
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2

from bench.models import DIGIT_ROW, REPO_ROOT, SENTENCE
from bench.servers import SERVERS
from bench.servers.base import tfserving_grpc_endpoint
from serve_app.fast_path import FAST_PATH_ENV
from serve_app.protocols import tfserving_proto


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
    endpoint = SERVERS[server].grpc_endpoints(model)[0]
    assert endpoint.method == "/inference.GRPCInferenceService/ModelInfer"
    assert endpoint.protocol == "v2-grpc" and endpoint.label == f"{server} (grpc)"
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
    (endpoint,) = SERVERS["triton"].grpc_endpoints("digits")  # Triton has no TF Serving API
    row = np.arange(10, dtype=np.float32).reshape(1, 10)
    response = triton.service_pb2.ModelInferResponse(model_name="digits")
    response.outputs.add(name="probabilities", datatype="FP32", shape=[1, 10])
    response.raw_output_contents.append(row.tobytes())
    assert endpoint.extract(response.SerializeToString()) == row[0].tolist()
    empty = triton.service_pb2.ModelInferResponse(model_name="digits").SerializeToString()
    with pytest.raises(KeyError):
        endpoint.extract(empty)


def _tfserving_endpoint(model: str = "digits") -> Any:
    endpoints = SERVERS["serve-app"].grpc_endpoints(model)
    assert [e.protocol for e in endpoints] == ["v2-grpc", "tfserving-grpc"]
    return endpoints[1]


def test_digits_is_also_called_over_tfserving_grpc_predict() -> None:
    endpoint = _tfserving_endpoint()
    assert endpoint.label == "serve-app (tfserving grpc)"
    assert endpoint.method == "/tensorflow.serving.PredictionService/Predict"
    request = predict_pb2.PredictRequest.FromString(endpoint.body())
    assert request.model_spec.name == "digits"
    assert request.model_spec.signature_name == ""  # the default: serving_default
    assert list(request.inputs) == ["pixels"]
    tensor = request.inputs["pixels"]
    assert tensor.dtype == types_pb2.DT_FLOAT
    assert [d.size for d in tensor.tensor_shape.dim] == [1, 64]
    assert tf.make_ndarray(tensor).reshape(-1).tolist() == pytest.approx(DIGIT_ROW)
    described = endpoint.describe()
    assert described["model_spec"] == {"name": "digits"}
    assert described["inputs"] == [{"name": "pixels", "dtype": "DT_FLOAT", "shape": [1, 64]}]


def test_the_service_reads_the_predict_request_and_its_answer_is_read_back() -> None:
    """Through this service's own TF Serving codec (pure functions): the request decodes
    to the digits row, and the answer it would send decodes to the output row."""
    endpoint = _tfserving_endpoint()
    target, request = tfserving_proto.decode_predict(endpoint.body(), 1 << 20)
    assert target.name == "digits" and request.inputs["pixels"].shape == (1, 64)
    assert request.inputs["pixels"].dtype == np.float32
    row = np.linspace(0, 1, 10, dtype=np.float32).reshape(1, 10)
    answer = tfserving_proto.encode_predict(target, 2, {"probabilities": row})
    assert endpoint.extract(answer.SerializeToString()) == pytest.approx(row[0].tolist())
    other = tfserving_proto.encode_predict(target, 2, {"scores": row})
    with pytest.raises(KeyError):
        endpoint.extract(other.SerializeToString())


def test_text_models_have_no_predict_endpoint() -> None:
    assert [e.protocol for e in SERVERS["serve-app"].grpc_endpoints("minilm")] == ["v2-grpc"]
    with pytest.raises(ValueError, match="digits only"):
        tfserving_grpc_endpoint("x", "minilm")
