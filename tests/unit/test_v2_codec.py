"""Open Inference Protocol codec: JSON and binary tensors, requested outputs, responses."""

import json
import struct

import numpy as np
import pytest

from serve_app.errors import InvalidInput
from serve_app.protocols.v2 import decode_infer, encode_infer, model_metadata


def body(document: dict) -> bytes:
    return json.dumps(document).encode()


def test_json_tensors_nested_or_flat() -> None:
    infer = decode_infer(
        body(
            {
                "id": "7",
                "parameters": {"temperature": 0.5, "binary_data_output": False},
                "inputs": [
                    {"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]},
                    {"name": "b", "shape": [2], "datatype": "BYTES", "data": ["x", "y"]},
                    {"name": "c", "shape": [1], "datatype": "BOOL", "data": [True]},
                ],
                "outputs": [{"name": "o", "parameters": {"binary_data": True}}],
            }
        ),
        None,
    )
    request = infer.request
    assert request.inputs["a"].dtype == np.float32 and request.inputs["a"].shape == (2, 2)
    assert request.inputs["b"].tolist() == ["x", "y"]
    assert request.inputs["c"].dtype == bool
    assert request.outputs == ["o"] and infer.binary_outputs == {"o"}
    assert request.parameters == {"temperature": 0.5}  # protocol parameters are stripped
    assert request.exact_dtypes and infer.id == "7"


def test_binary_tensors() -> None:
    values = np.array([1, -2, 3], dtype=np.int64)
    strings = b"".join(struct.pack("<I", len(s)) + s for s in (b"ab", b""))
    header = body(
        {
            "inputs": [
                {
                    "name": "n",
                    "shape": [3],
                    "datatype": "INT64",
                    "parameters": {"binary_data_size": 24},
                },
                {
                    "name": "s",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(strings)},
                },
            ]
        }
    )
    infer = decode_infer(header + values.tobytes() + strings, str(len(header)))
    assert infer.request.inputs["n"].tolist() == [1, -2, 3]
    assert infer.request.inputs["s"].tolist() == [b"ab", b""]


@pytest.mark.parametrize(
    ("tensor", "fragment"),
    [
        ({"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}, "needs 3 values"),
        ({"name": "x", "shape": [1], "datatype": "INT8", "data": [1.5]}, "integers"),
        ({"name": "x", "shape": [1], "datatype": "INT8", "data": [300]}, "out of range"),
        ({"name": "x", "shape": [1], "datatype": "BOOL", "data": [1]}, "true/false"),
        ({"name": "x", "shape": [1], "datatype": "BYTES", "data": [1]}, "strings"),
        ({"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}, "non-negative"),
        ({"name": "x", "shape": [1], "datatype": "FP32"}, "no 'data'"),
        ({"shape": [1], "datatype": "FP32", "data": [1]}, "needs a 'name'"),
    ],
)
def test_bad_tensors_name_the_problem(tensor: dict, fragment: str) -> None:
    with pytest.raises(InvalidInput) as error:
        decode_infer(body({"inputs": [tensor]}), None)
    assert fragment in str(error.value)


def test_binary_size_mismatch_and_bad_header_length() -> None:
    header = body(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 4},
                }
            ]
        }
    )
    with pytest.raises(InvalidInput, match="shape needs 8"):
        decode_infer(header + b"\0" * 4, str(len(header)))
    exact = body(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 8},
                }
            ]
        }
    )
    with pytest.raises(InvalidInput, match="not claimed"):
        decode_infer(exact + b"\0" * 12, str(len(exact)))
    with pytest.raises(InvalidInput, match="Inference-Header-Content-Length"):
        decode_infer(header, "999999")


def test_encode_json_and_binary_outputs() -> None:
    infer = decode_infer(
        body(
            {
                "id": "1",
                "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
                "outputs": [{"name": "b", "parameters": {"binary_data": True}}, {"name": "t"}],
            }
        ),
        None,
    )
    outputs = {
        "b": np.array([1.5, 2.5], dtype=np.float32),
        "t": np.array([["x"], ["yz"]], dtype=object),
    }
    content, header_length = encode_infer("m", 3, infer, outputs)
    header = json.loads(content[:header_length])
    assert header["model_name"] == "m" and header["model_version"] == "3" and header["id"] == "1"
    assert header["outputs"][0] == {
        "name": "b",
        "datatype": "FP32",
        "shape": [2],
        "parameters": {"binary_data_size": 8},
    }
    assert header["outputs"][1] == {
        "name": "t",
        "datatype": "BYTES",
        "shape": [2, 1],
        "data": ["x", "yz"],
    }
    assert np.frombuffer(content[header_length:], dtype="<f4").tolist() == [1.5, 2.5]


def test_model_metadata_shape() -> None:
    io = {"inputs": [("text", "object", (-1,))], "outputs": [("e", "float32", (-1, 4))]}
    assert model_metadata("m", [2], "transformers", io) == {
        "name": "m",
        "versions": ["2"],
        "platform": "transformers",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "e", "datatype": "FP32", "shape": [-1, 4]}],
    }
