"""Open Inference Protocol codec: JSON and binary tensors, requested outputs, responses."""

import json
import struct

import numpy as np
import pytest

from serve_app.errors import InvalidInput
from serve_app.protocols import v2
from serve_app.protocols.v2 import decode_infer, encode_infer, model_metadata
from serve_app.request import PredictRequest


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


# --- malformed input: 400 naming what was expected, never an exception of numpy or int() ----


def tensor(**fields: object) -> dict:
    return {"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0], **fields}


@pytest.mark.parametrize(
    "length",
    [
        "\u00b2",  # superscript two: str.isdigit() says yes, int() says no
        "\u0663",  # Arabic-Indic three: int() reads 3
        "9" * 5000,  # int() refuses thousands of digits
        "9" * 19,
        "",
        "-1",
        " 12",
        "12 ",
        "0x10",
    ],
)
def test_header_length_must_be_ascii_digits_within_the_body(length: str) -> None:
    header = body({"inputs": [tensor()]})
    with pytest.raises(InvalidInput) as error:
        decode_infer(header, length)
    message = str(error.value)
    assert "Inference-Header-Content-Length" in message and "ASCII digits" in message


def test_header_length_in_ascii_digits_still_splits_the_body() -> None:
    header = body(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 4},
                }
            ]
        }
    )
    infer = decode_infer(header + np.float32(2.5).tobytes(), str(len(header)))
    assert infer.request.inputs["x"].tolist() == [2.5]


@pytest.mark.parametrize(
    ("shape", "data", "fragment"),
    [
        ([1] * 65, [1.0], "at most 32"),  # past numpy's 64 dimensions
        ([1] * 33, [1.0], "at most 32"),
        ([0, 2**63], [], "2^63-1"),
        ([2**64], [1.0], "non-negative integers"),  # orjson reads it as a float
        ([0, 2**62, 4], [], "cannot be made"),  # int64 dimensions, but numpy cannot count them
        ([True], [1.0], "non-negative integers"),
        ([1, False], [1.0], "non-negative integers"),
        ([1.0], [1.0], "non-negative integers"),
        ("1", [1.0], "non-negative integers"),
    ],
)
def test_bad_shapes_are_400(shape: object, data: list, fragment: str) -> None:
    with pytest.raises(InvalidInput) as error:
        decode_infer(body({"inputs": [tensor(shape=shape, data=data)]}), None)
    assert fragment in str(error.value) and "input 'x'" in str(error.value)


def test_data_nested_deeper_than_any_tensor_is_400_without_recursion() -> None:
    # Deep enough to pass json.loads but to blow a recursive flatten (it did: RecursionError).
    depth = 700
    document = '{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": '
    document += "[" * depth + "1" + "]" * depth + "}]}"
    with pytest.raises(InvalidInput, match="nested more than 32 lists deep"):
        decode_infer(document.encode(), None)


@pytest.mark.parametrize(
    ("datatype", "value", "fragment"),
    [
        ("INT8", 300, "value 300, out of range for INT8 (-128 to 127)"),
        ("UINT8", -1, "value -1, out of range for UINT8 (0 to 255)"),
        ("INT64", 2**63, "value 9223372036854775808, out of range for INT64"),
        ("UINT64", -1, "out of range for UINT64 (0 to 18446744073709551615)"),
        ("FP32", 1e300, "value 1e+300, out of range for FP32 (-3.4028235e+38 to 3.4028235e+38"),
        ("FP16", 70000, "value 70000, out of range for FP16 (-65504 to 65504"),
        ("FP32", 10**400, "out of range for FP32"),
        ("FP64", 10**400, "out of range for FP64"),
    ],
)
def test_out_of_range_numbers_are_400_naming_value_and_range(
    datatype: str, value: object, fragment: str
) -> None:
    document = {"inputs": [tensor(datatype=datatype, data=[0, value], shape=[2])]}
    with pytest.raises(InvalidInput) as error:
        decode_infer(json.dumps(document).encode(), None)
    assert fragment in str(error.value) and "input 'x'" in str(error.value)


def test_floats_at_the_edge_of_their_range_and_non_finite_ones_are_kept() -> None:
    edge = float(np.finfo(np.float32).max)
    document = {"inputs": [tensor(data=[edge, -edge, "NaN"], shape=[3])]}
    text = json.dumps(document).replace('"NaN"', "NaN").encode()
    values = decode_infer(text, None).request.inputs["x"]
    assert values[0] == np.float32(edge) and values[1] == -np.float32(edge)
    assert np.isnan(values[2])
    infinite = json.dumps({"inputs": [tensor(data=[float("inf")])]}).encode()
    assert np.isinf(decode_infer(infinite, None).request.inputs["x"][0])


def _reference_body(model, version, infer, outputs) -> bytes:
    """What encode_infer wrote with json.dumps: its answers must stay byte for byte the same."""
    described = []
    for name, array in outputs.items():
        entry = {"name": name, "datatype": v2._datatype(array), "shape": list(array.shape)}
        entry["data"] = v2._to_json(array)
        described.append(entry)
    document = {"model_name": model, "model_version": str(version)}
    if infer.id is not None:
        document["id"] = infer.id
    document["outputs"] = described
    return json.dumps(document, allow_nan=True, separators=(",", ":")).encode()


def test_answers_are_written_byte_for_byte_as_json_writes_them() -> None:
    rng = np.random.default_rng(0)
    cases = [
        {"embeddings": rng.standard_normal((2, 384)).astype(np.float32) * 1e-5},
        {"big": np.array([1e16, 1e22, 123456789012345678.0, 5e-324, 0.1, -0.0])},
        {"ints": np.array([[0, -5, 2**62]], dtype=np.int64), "flags": np.array([True, False])},
        {"nan": np.array([np.nan, np.inf, -np.inf, 1.5], dtype=np.float32)},
        {"text": np.array(["é ok", "0.00001", '"quoted"'], dtype=object)},
    ]
    for outputs in cases:
        for request_id in (None, "id-ü"):
            infer = v2.InferRequest(PredictRequest({}), id=request_id)
            body, header_length = v2.encode_infer("m-é", 3, infer, outputs)
            assert header_length is None
            assert body == _reference_body("m-é", 3, infer, outputs), outputs


@pytest.mark.parametrize(
    "parameters",
    [
        {"deep": json.loads("[" * 500 + "]" * 500)},  # could not be pickled in a coalesced call
        {"nested": [[1, 2]]},
        {"mapping": {"a": 1}},
        {"long": list(range(65))},
    ],
)
def test_parameters_are_scalars_or_flat_lists_of_them(parameters: dict) -> None:
    tensor = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}
    with pytest.raises(InvalidInput, match="a list of at most 64 of them"):
        decode_infer(body({"inputs": [tensor], "parameters": parameters}), None)
    with pytest.raises(InvalidInput, match=r"inputs\[0\]\.parameters"):
        decode_infer(body({"inputs": [{**tensor, "parameters": parameters}]}), None)


def test_flat_parameter_lists_are_kept() -> None:
    tensor = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}
    infer = decode_infer(body({"inputs": [tensor], "parameters": {"stop": ["\n", "."]}}), None)
    assert infer.request.parameters == {"stop": ["\n", "."]}
