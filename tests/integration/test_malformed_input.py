"""Malformed input through the real service: 400 naming what was expected, never a 500.

Issue 15, items 2 and 9, against the shared ``fleet``: JSON nested thousands deep, integers of
thousands of digits, bad ``Inference-Header-Content-Length`` values, V2 shapes numpy cannot
make, version segments of non-ASCII or thousands of digits, tf.Example feature values their
protobuf lists cannot hold, and numbers the signature's dtype cannot hold (which TF Serving
JSON used to wrap or saturate). Requests are written byte for byte (``raw_http``), so what
the test means to send is what the server gets.
"""

from __future__ import annotations

import json

import pytest

from tests.integration.fleet import MAX_REQUEST_BYTES
from tests.integration.raw_http import post_json, send

pytestmark = pytest.mark.integration

LEAKS = ("Traceback", 'File "', "site-packages")
MULTI_ROW = {"x": [1.0, 2.0], "k": 3, "who": "a"}  # the `multi` model's inputs


def assert_400(answer, *fragments: str) -> str:
    """The answer is a 400 in TF Serving / V2's error body, naming each fragment."""
    assert answer.status == 400, (answer.status, answer.text[:300])
    message = answer.json()["error"]
    for fragment in fragments:
        assert fragment in message, message
    for leak in LEAKS:
        assert leak not in message
    return message


def nested(depth: int, leaf: str = "1.0") -> str:
    return "[" * depth + leaf + "]" * depth


# --- JSON nested thousands deep, integers of thousands of digits ----------------------------


@pytest.mark.parametrize("depth", [40, 700, 950, 5000, 100_000])
def test_json_nested_deep_is_400_on_both_protocols(fleet, depth):
    # 40 and 700 pass the JSON parser and reach the codecs, which once recursed per level.
    tf_body = ('{"instances": ' + nested(depth) + "}").encode()
    v2_body = (
        '{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": '
        + nested(depth)
        + "}]}"
    ).encode()
    json_type = [(b"Content-Type", b"application/json")]
    answers = [
        send(fleet["url"], "POST", b"/v1/models/half-plus-two:predict", json_type, tf_body),
        send(fleet["url"], "POST", b"/v2/models/half-plus-two/infer", json_type, v2_body),
    ]
    for answer in answers:
        message = assert_400(answer)
        assert "nested" in message or "expects shape" in message, message


def test_integers_of_thousands_of_digits_are_400_on_both_protocols(fleet):
    huge = "1" + "0" * 5000
    tf_body = ('{"instances": [' + huge + "]}").encode()
    v2_body = (
        '{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [' + huge + "]}]}"
    ).encode()
    json_type = [(b"Content-Type", b"application/json")]
    for path, body in (
        (b"/v1/models/half-plus-two:predict", tf_body),
        (b"/v2/models/half-plus-two/infer", v2_body),
    ):
        assert_400(send(fleet["url"], "POST", path, json_type, body), "not valid JSON")


# --- V2: the header length and shapes ------------------------------------------------------


@pytest.mark.parametrize("length", [b"\xb2", b"9" * 5000, "\u0663".encode()])
def test_v2_header_length_must_be_ascii_digits(fleet, length):
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    ).encode()
    headers = [
        (b"Content-Type", b"application/octet-stream"),
        (b"Inference-Header-Content-Length", length),
    ]
    answer = send(fleet["url"], "POST", b"/v2/models/half-plus-two/infer", headers, body)
    assert b"\r\nInference-Header-Content-Length: " + length + b"\r\n" in answer.sent
    assert_400(answer, "Inference-Header-Content-Length", "ASCII digits")


@pytest.mark.parametrize(
    ("shape", "data", "fragment"),
    [
        ([1] * 65, [1.0], "at most 32"),
        ([0, 2**63], [], "2^63-1"),
        ([True], [1.0], "non-negative integers"),
        ([0, 2**62, 4], [], "cannot be made"),
    ],
)
def test_v2_shapes_numpy_cannot_make_are_400(fleet, shape, data, fragment):
    document = {"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": data}]}
    answer = post_json(fleet["url"], "/v2/models/half-plus-two/infer", document)
    assert_400(answer, "input 'x'", fragment)


# --- version path segments ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "fragment"),
    [
        ("POST", "/v1/models/half-plus-two/versions/" + "9" * 5000 + ":predict", "18 digits"),
        ("POST", "/v1/models/half-plus-two/versions/%D9%A3:predict", "ASCII digits"),
        ("GET", "/v1/models/half-plus-two/versions/" + "9" * 5000, "18 digits"),
        ("GET", "/v1/models/half-plus-two/versions/%C2%B2/metadata", "ASCII digits"),
        ("POST", "/v2/models/half-plus-two/versions/" + "9" * 5000 + "/infer", "18 ASCII"),
        ("POST", "/v2/models/half-plus-two/versions/%D9%A3/infer", "ASCII"),
        ("GET", "/v2/models/half-plus-two/versions/%C2%B2", "ASCII"),
        ("GET", "/v2/models/half-plus-two/versions/" + "9" * 5000 + "/ready", "18 ASCII"),
    ],
)
def test_version_segments_of_non_ascii_or_thousands_of_digits_are_400(
    fleet, method, target, fragment
):
    # %D9%A3 is the Arabic-Indic digit three, which int() reads as 3; %C2%B2 is "²".
    body = json.dumps({"instances": [1.0]}).encode() if method == "POST" else b""
    headers = [(b"Content-Type", b"application/json")]
    answer = send(fleet["url"], method, target.encode(), headers, body)
    assert_400(answer, "version", fragment)


def test_raw_non_ascii_bytes_in_a_path_are_a_client_error(fleet):
    target = "/v1/models/half-plus-two/versions/\u0663:predict".encode()
    headers = [(b"Content-Type", b"application/json")]
    answer = send(fleet["url"], "POST", target, headers, b'{"instances": [1.0]}')
    assert target in answer.sent
    assert 400 <= answer.status < 500, (answer.status, answer.text[:300])


# --- numbers the signature's dtype cannot hold (TF Serving JSON wrapped them) ---------------


@pytest.mark.parametrize(
    ("path", "document", "fragment"),
    [
        # int64 k: 2**63 used to wrap to -2**63; 1e20 to saturate at INT64_MIN.
        (
            "/v1/models/multi:predict",
            {"instances": [{**MULTI_ROW, "k": 2**63}]},
            "input 'k' has value 9223372036854775808, out of range for int64",
        ),
        (
            "/v1/models/multi:predict",
            {"instances": [{**MULTI_ROW, "k": 1e20}]},
            "input 'k' has value 1e+20, out of range for int64",
        ),
        # int32 max_new_tokens: 2**32 + 2 used to wrap to 2, a valid budget.
        (
            "/v1/models/tiny-gpt2:predict",
            {"instances": [{"text": "hi", "max_new_tokens": 2**32 + 2}]},
            "input 'max_new_tokens' has value 4294967298, out of range for int32",
        ),
        # float32: 1e39 used to become Infinity.
        (
            "/v1/models/half-plus-two:predict",
            {"instances": [1.0, 1e39]},
            "value 1e+39, out of range for float32 (-3.4028235e+38 to 3.4028235e+38",
        ),
        (
            "/v1/models/digits:predict",
            {"inputs": [[1e300] * 64]},
            "value 1e+300, out of range for float32",
        ),
        (
            "/v2/models/multi/infer",
            {
                "inputs": [
                    {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 1e39]},
                    {"name": "k", "shape": [1], "datatype": "INT64", "data": [2**63]},
                    {"name": "who", "shape": [1], "datatype": "BYTES", "data": ["a"]},
                ]
            },
            "out of range for FP32",
        ),
        (
            "/v2/models/multi/infer",
            {
                "inputs": [
                    {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]},
                    {"name": "k", "shape": [1], "datatype": "INT64", "data": [2**63]},
                    {"name": "who", "shape": [1], "datatype": "BYTES", "data": ["a"]},
                ]
            },
            "input 'k' has value 9223372036854775808, out of range for INT64",
        ),
    ],
)
def test_out_of_range_numbers_are_400_on_both_protocols(fleet, path, document, fragment):
    assert_400(post_json(fleet["url"], path, document), fragment)


def test_numbers_in_range_still_answer(fleet):
    answer = post_json(fleet["url"], "/v1/models/multi:predict", {"instances": [MULTI_ROW]})
    assert answer.status == 200, answer.text
    assert answer.json()["predictions"][0]["k_twice"] == 6
    edge = post_json(
        fleet["url"], "/v1/models/half-plus-two:predict", {"instances": [3.0e38, -2.0]}
    )
    assert edge.status == 200 and edge.json()["predictions"][1] == 1.0, edge.text


# --- classify / regress: tf.Example feature values -------------------------------------------


@pytest.mark.parametrize(
    ("feature", "fragment"),
    [
        (2**63, "out of range for a tf.Example int64_list"),
        (1e39, "out of range for a tf.Example float_list"),
        (True, "write booleans as 0 or 1"),
        ("\ud800", "not valid Unicode"),
        ([[1.0]], "flat list"),
    ],
)
def test_example_features_their_protobuf_lists_cannot_hold_are_400(fleet, feature, fragment):
    document = {"signature_name": "regress_x_to_y", "examples": [{"x": feature}]}
    answer = post_json(fleet["url"], "/v1/models/half-plus-two:regress", document)
    assert answer.status == 400, (answer.status, answer.text[:300])
    assert fragment in answer.json()["error"], answer.text
    good = {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}
    assert post_json(fleet["url"], "/v1/models/half-plus-two:regress", good).json() == {
        "results": [3.0]
    }


# --- an empty prompt (found by test_fuzz: generate() indexed its last token, a 500) --------


@pytest.mark.parametrize(
    ("path", "document"),
    [
        ("/v1/models/tiny-gpt2:predict", {"instances": [""]}),
        ("/v1/models/tiny-gpt2:predict", {"instances": [{"text": "", "max_new_tokens": 2}]}),
        ("/v1/completions", {"model": "tiny-gpt2", "prompt": "", "max_tokens": 2}),
        ("/v1/completions", {"model": "tiny-gpt2", "prompt": ["hi", ""], "max_tokens": 2}),
    ],
)
def test_an_empty_prompt_is_400(fleet, path, document):
    answer = post_json(fleet["url"], path, document)
    assert answer.status == 400, (answer.status, answer.text[:300])
    assert "no tokens" in answer.text or "must not be empty" in answer.text, answer.text


# --- the load test's mixed mode, briefly -----------------------------------------------------


def test_load_test_mixed_mode_runs_against_the_fleet(fleet):
    import asyncio

    from bench.bad_requests import KINDS, catalogue
    from bench.load_test import run

    models = ["digits", "minilm", "tiny-gpt2"]
    bad = catalogue(max_request_bytes=MAX_REQUEST_BYTES)
    report = asyncio.run(run(fleet["url"], models, 4.0, 8, 400, 30.0, 0.5, bad))
    mixed = report["mixed"]
    assert mixed["bad"]["requests"] > 0 and mixed["good"]["requests"] > 0, mixed
    assert set(mixed["bad"]["by_kind"]) <= set(KINDS)
    assert mixed["good"]["failed"] == 0, mixed["good"]
    assert mixed["answers_500"] == 0 and mixed["bad"]["not_4xx"] == 0, mixed["bad"]
    assert mixed["replicas"]["restarted"] == [], mixed["replicas"]
    assert report["passed"], report
