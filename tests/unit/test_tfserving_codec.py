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


# --- malformed input: 400 naming what was expected -----------------------------------------


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("digits/versions/\u0663:predict", "Malformed request"),  # Arabic-Indic 3: int() reads it
        ("digits/versions/\u00b2:predict", "Malformed request"),  # superscript 2
        ("digits/versions/" + "9" * 5000 + ":predict", "at most 18 digits"),  # int() refuses
        ("digits/versions/" + "9" * 19, "at most 18 digits"),
        ("digits/versions/-1:predict", "non-negative"),
        ("digits:predict\n", "Malformed request"),  # `$` matched before a final newline
    ],
)
def test_version_segments_are_ascii_digits_of_bounded_length(path: str, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment) as info:
        parse_model_path(path)
    assert info.value.status_code == 400
    assert len(str(info.value)) < 400  # the message quotes the path, shortened


def test_the_largest_version_of_18_digits_is_read() -> None:
    assert parse_model_path("digits/versions/" + "9" * 18).version == 10**18 - 1


@pytest.mark.parametrize(
    ("feature", "fragment"),
    [
        (2**63, "value 9223372036854775808, out of range for a tf.Example int64_list"),
        ([1, -(2**63) - 1], "out of range for a tf.Example int64_list"),
        (1e39, "value 1e+39, out of range for a tf.Example float_list (-3.4028235e+38"),
        ([1.5, 10**400], "out of range for a tf.Example float_list"),
        (True, "write booleans as 0 or 1"),
        ([1, True], "write booleans as 0 or 1"),
        ([[1.0]], "flat"),
        ([1, "a"], "of one of these kinds"),
        (None, "integers, numbers, strings or b64"),
        ("\ud800", "not valid Unicode"),
    ],
)
def test_example_features_outside_their_protobuf_lists_are_400(feature, fragment) -> None:
    from serve_app.protocols.tfserving import decode_examples

    with pytest.raises(InvalidInput) as info:
        decode_examples({"examples": [{"x": feature}]}, "regress")
    assert fragment in str(info.value) and "feature 'x'" in str(info.value)
    with pytest.raises(InvalidInput, match="feature 'x'"):  # the same in the context
        decode_examples({"context": {"x": feature}, "examples": [{}]}, "regress")


def test_example_features_at_the_edge_of_their_range_are_kept() -> None:
    from serve_app.protocols.tfserving import decode_examples

    edge = float(np.finfo(np.float32).max)
    features = {"i": [-(2**63), 2**63 - 1], "f": [edge, float("nan"), 2**70], "s": "ünï"}
    request = decode_examples({"examples": [features]}, "classify")
    assert request.examples[0]["i"] == [-(2**63), 2**63 - 1]
    assert request.examples[0]["f"][0] == edge and request.examples[0]["s"] == "ünï"


def test_integers_past_64_bits_become_float64_for_the_signature_to_judge() -> None:
    request, _ = decode_predict({"instances": [-1, 2**70]})
    assert request.inputs[None].dtype == np.float64
    assert request.inputs[None].tolist() == [-1.0, float(2**70)]
    with pytest.raises(InvalidInput, match="larger than any tensor dtype holds"):
        decode_predict({"instances": [1, 10**400]})


@pytest.mark.parametrize("depth", [33, 700])
def test_instances_nested_deeper_than_any_tensor_are_400_without_recursion(depth: int) -> None:
    with pytest.raises(InvalidInput, match="nested more than 32 lists deep"):
        decode_predict({"instances": _nest([1.0], depth)})
    request, _ = decode_predict({"instances": _nest([1.0], 32)})
    assert request.inputs[None].ndim == 32


def _nest(value: list, depth: int) -> list:
    for _ in range(depth - 1):
        value = [value]
    return value
