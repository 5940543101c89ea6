"""Open Inference Protocol gRPC codec against tritonclient's messages and tensor encoding.

Requests are built the way ``tritonclient.grpc`` builds them (its ``InferInput``, raw
contents) or with the typed ``contents`` other clients send; responses are read back with
tritonclient's ``InferResult``.
"""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2

from serve_app.errors import InvalidInput
from serve_app.protocols import v2_proto as codec


def client_request(*inputs: triton.InferInput, **fields) -> service_pb2.ModelInferRequest:
    """A ModelInferRequest as tritonclient's ``infer`` sends it: raw contents per input."""
    request = service_pb2.ModelInferRequest(model_name="m", **fields)
    for infer_input in inputs:
        request.inputs.append(infer_input._get_tensor())
        request.raw_input_contents.append(infer_input._get_content())
    return request


def infer_input(name: str, array: np.ndarray, datatype: str) -> triton.InferInput:
    infer_input = triton.InferInput(name, list(array.shape), datatype)
    infer_input.set_data_from_numpy(array)
    return infer_input


def test_raw_contents_from_tritonclient_decode_to_the_sent_arrays() -> None:
    x = np.array([[1.5, -2.0]], dtype=np.float32)
    h = np.array([0.5, 2.0], dtype=np.float16)
    text = np.array([b"hello", "w\u00f6rld".encode()], dtype=object)
    request = client_request(
        infer_input("x", x, "FP32"),
        infer_input("h", h, "FP16"),
        infer_input("text", text, "BYTES"),
        model_version="2",
        id="req-1",
    )
    request.outputs.add(name="y")
    request.parameters["signature_name"].string_param = "sig"
    request.parameters["priority"].uint64_param = 1  # Triton's, not the model's
    request.parameters["temperature"].double_param = 0.5
    decoded = codec.decode_infer(request.SerializeToString())
    assert (decoded.name, decoded.version, decoded.id) == ("m", 2, "req-1")
    model_request = decoded.request
    assert model_request.exact_dtypes and model_request.version == 2
    assert model_request.signature_name == "sig" and model_request.outputs == ["y"]
    assert model_request.parameters == {"temperature": 0.5}
    np.testing.assert_array_equal(model_request.inputs["x"], x)
    assert model_request.inputs["h"].dtype == np.float16
    np.testing.assert_array_equal(model_request.inputs["h"], h)
    assert model_request.inputs["text"].tolist() == text.tolist()


def test_typed_contents_decode_with_their_datatype() -> None:
    request = service_pb2.ModelInferRequest(model_name="m")
    a = request.inputs.add(name="a", datatype="INT8", shape=[2, 2])
    a.contents.int_contents.extend([1, -2, 3, 127])
    b = request.inputs.add(name="b", datatype="BYTES", shape=[1])
    b.contents.bytes_contents.append(b"\x00raw")
    c = request.inputs.add(name="c", datatype="BOOL", shape=[2])
    c.contents.bool_contents.extend([True, False])
    inputs = codec.decode_infer(request.SerializeToString()).request.inputs
    assert inputs["a"].dtype == np.int8 and inputs["a"].tolist() == [[1, -2], [3, 127]]
    assert inputs["b"].tolist() == [b"\x00raw"]
    assert inputs["c"].dtype == bool and inputs["c"].tolist() == [True, False]


def contents_request(
    datatype: str, shape: list[int], version: str = "", **contents
) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="m", model_version=version)
    tensor = request.inputs.add(name="x", datatype=datatype, shape=shape)
    for field, values in contents.items():
        getattr(tensor.contents, field).extend(values)
    return request


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        (service_pb2.ModelInferRequest(model_name="m"), "no inputs"),
        (contents_request("FP33", [1], fp32_contents=[1]), "datatype 'FP33' is not one of"),
        (contents_request("FP32", [3], fp32_contents=[1, 2]), "needs 3 values"),
        (contents_request("FP32", [-1], fp32_contents=[1]), "negative"),
        (contents_request("FP32", [0, 2**62, 2**62]), "cannot be made"),
        (contents_request("FP16", [1]), "raw_input_contents"),
        (contents_request("UINT8", [1], uint_contents=[256]), "256, out of range for UINT8"),
        (contents_request("FP32", [1], "v1", fp32_contents=[1]), "model_version"),
        (
            client_request(
                infer_input("x", np.zeros(3, np.float32), "FP32"),
                infer_input("x", np.zeros(3, np.float32), "FP32"),
            ),
            "appears twice",
        ),
    ],
    ids=[
        "no-inputs",
        "datatype",
        "count",
        "negative",
        "unmakeable-shape",
        "fp16-contents",
        "range",
        "version",
        "twice",
    ],
)
def test_bad_requests_are_refused_naming_what_was_wrong(request_, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        codec.decode_infer(request_.SerializeToString())


def test_raw_contents_must_match_the_inputs() -> None:
    one = client_request(infer_input("x", np.zeros(2, np.float32), "FP32"))
    one.raw_input_contents.append(b"extra")
    with pytest.raises(InvalidInput, match="2 raw_input_contents for 1 inputs"):
        codec.decode_infer(one.SerializeToString())
    short = client_request(infer_input("x", np.zeros(2, np.float32), "FP32"))
    short.raw_input_contents[0] = b"\0" * 4
    with pytest.raises(InvalidInput, match="4 bytes of binary data, shape needs 8"):
        codec.decode_infer(short.SerializeToString())
    both = client_request(infer_input("x", np.zeros(1, np.float32), "FP32"))
    both.inputs[0].contents.fp32_contents.append(1.0)
    with pytest.raises(InvalidInput, match="contents must not be given"):
        codec.decode_infer(both.SerializeToString())


def test_response_reads_back_with_tritonclients_infer_result() -> None:
    decoded = codec.ModelInfer("m", None, "req-1", None)  # type: ignore[arg-type]
    outputs = {
        "y": np.array([[1.0, 2.0]], dtype=np.float32),
        "label": np.array([b"cat", b"d\xc3\xb6g"], dtype=object),
        "k": np.array([3], dtype=np.int64),
    }
    message = codec.encode_infer(decoded, 4, outputs)
    response = service_pb2.ModelInferResponse.FromString(message.SerializeToString())
    assert (response.model_name, response.model_version, response.id) == ("m", "4", "req-1")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("y", "FP32", [1, 2]),
        ("label", "BYTES", [2]),
        ("k", "INT64", [1]),
    ]
    result = triton.InferResult(response)
    np.testing.assert_array_equal(result.as_numpy("y"), outputs["y"])
    assert result.as_numpy("label").tolist() == outputs["label"].tolist()
    assert result.as_numpy("k").tolist() == [3]


def test_model_requests_and_metadata() -> None:
    request = service_pb2.ModelReadyRequest(name="m", version="3")
    assert codec.decode_model_request(
        codec.ModelReadyRequestProto, request.SerializeToString()
    ) == ("m", 3)
    request = service_pb2.ModelMetadataRequest(name="m")
    assert codec.decode_model_request(
        codec.ModelMetadataRequestProto, request.SerializeToString()
    ) == ("m", None)
    document = {
        "name": "m",
        "versions": ["1", "2"],
        "platform": "tensorflow_savedmodel",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
        "outputs": [{"name": "y", "datatype": "BYTES", "shape": [-1]}],
    }
    response = service_pb2.ModelMetadataResponse.FromString(
        codec.encode_metadata(document).SerializeToString()
    )
    assert list(response.versions) == ["1", "2"] and response.platform == "tensorflow_savedmodel"
    assert (response.inputs[0].name, list(response.inputs[0].shape)) == ("x", [-1, 3])
    assert response.outputs[0].datatype == "BYTES"
