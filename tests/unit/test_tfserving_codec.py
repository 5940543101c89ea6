"""TF Serving REST codec: paths, row and columnar bodies, b64, responses."""

import base64

import numpy as np
import pytest

from serve_app.errors import InvalidInput
from serve_app.protocols.tfserving import decode_predict, encode_predict, parse_model_path


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("digits", ("digits", None, None, "status")),
        ("digits/metadata", ("digits", None, None, "metadata")),
        ("digits:predict", ("digits", None, None, "predict")),
        ("digits/versions/2:PREDICT", ("digits", 2, None, "predict")),
        ("digits/labels/stable:predict", ("digits", None, "stable", "predict")),
        ("digits/versions/2/metadata", ("digits", 2, None, "metadata")),
    ],
)
def test_parse_model_path(path: str, expected: tuple) -> None:
    parsed = parse_model_path(path)
    assert (parsed.name, parsed.version, parsed.label, parsed.action) == expected


@pytest.mark.parametrize("path", ["digits:explain", "a/b/c", "digits/versions/x:predict", ""])
def test_bad_paths_are_malformed_requests_as_in_tf_serving(path: str) -> None:
    # http_rest_api_handler_test.cc (UnsupportedApiCalls): INVALID_ARGUMENT, so 400.
    with pytest.raises(InvalidInput, match="Malformed request") as info:
        parse_model_path(path)
    assert info.value.status_code == 400


def test_row_format_single_unnamed_input() -> None:
    request, row = decode_predict({"instances": [[1, 2], [3, 4]]})
    assert row and request.signature_name == ""
    np.testing.assert_array_equal(request.inputs[None], [[1, 2], [3, 4]])


def test_row_format_named_inputs_become_columns() -> None:
    request, row = decode_predict(
        {"signature_name": "s", "instances": [{"a": 1.0, "b": "x"}, {"a": 2.0, "b": "y"}]}
    )
    assert row and request.signature_name == "s"
    np.testing.assert_array_equal(request.inputs["a"], [1.0, 2.0])
    assert request.inputs["b"].dtype == object and list(request.inputs["b"]) == ["x", "y"]


def test_columnar_format_and_b64() -> None:
    payload = base64.b64encode(b"\x00\xffbytes").decode()
    request, row = decode_predict({"inputs": {"img": [{"b64": payload}], "k": [[1], [2]]}})
    assert not row
    assert request.inputs["img"][0] == b"\x00\xffbytes"
    assert request.inputs["k"].shape == (2, 1)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"instances": [[1, 2], [3]]}, "ragged"),
        ({"instances": [{"a": 1}, {"b": 2}]}, "every instance must name the same inputs"),
        ({"instances": [{"a": 1}, 2]}, "mixes named"),
        ({"instances": 3}, "non-empty list"),
        ({"inputs": {}}, "must not be empty"),
        ({"inputs": {"a": [{"b64": "###"}]}}, "not base64"),
        ({"inputs": {"a": [{"x": 1}]}}, "contains an object"),
        ({"instances": [1], "extra": 1}, "unknown key"),
        ({"signature_name": 3, "instances": [1]}, "signature_name"),
        ({}, "exactly one of"),
    ],
)
def test_bad_bodies_name_the_problem(body: dict, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        decode_predict(body)


def test_encode_row_and_columnar() -> None:
    single = {"y": np.array([[1.5], [2.5]], dtype=np.float32)}
    assert encode_predict(single, row_format=True) == {"predictions": [[1.5], [2.5]]}
    assert encode_predict(single, row_format=False) == {"outputs": [[1.5], [2.5]]}
    multi = {"label": np.array(["a", "b"], dtype=object), "score": np.array([0.5, 0.25])}
    assert encode_predict(multi, row_format=True) == {
        "predictions": [{"label": "a", "score": 0.5}, {"label": "b", "score": 0.25}]
    }
    assert encode_predict(multi, row_format=False) == {
        "outputs": {"label": ["a", "b"], "score": [0.5, 0.25]}
    }


def test_encode_bytes_outputs() -> None:
    outputs = {"out_bytes": np.array([b"\x01\x02"], dtype=object)}
    assert encode_predict(outputs, True) == {"predictions": [{"b64": "AQI="}]}
    text = {"text": np.array([b"hello", b"\xff"], dtype=object)}
    assert encode_predict(text, True) == {"predictions": ["hello", {"b64": "/w=="}]}


def test_examples_merge_context_and_unwrap_b64() -> None:
    from serve_app.protocols.tfserving import decode_examples

    request = decode_examples(
        {"context": {"c": 1, "x": 0.0}, "examples": [{"x": 2.0, "img": {"b64": "AQI="}}, {}]},
        "classify",
    )
    assert request.method == "classify"
    assert request.examples == [{"c": 1, "x": 2.0, "img": b"\x01\x02"}, {"c": 1, "x": 0.0}]


def test_encode_classify_and_regress() -> None:
    from serve_app.protocols.tfserving import encode_classify, encode_regress

    scores_only = {"scores": np.array([[3.0]], dtype=np.float32)}
    assert encode_classify(scores_only) == {"results": [[["", 3.0]]]}
    both = {
        "classes": np.array([[b"cat", b"dog"]], dtype=object),
        "scores": np.array([[0.75, 0.25]]),
    }
    assert encode_classify(both) == {"results": [[["cat", 0.75], ["dog", 0.25]]]}
    assert encode_regress({"outputs": np.array([[3.0], [4.5]])}) == {"results": [3.0, 4.5]}
