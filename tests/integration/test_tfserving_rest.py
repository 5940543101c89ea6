"""TensorFlow Serving REST, driven with `requests` the way TF Serving's own REST tests do it.

The SavedModels come from TF Serving's test data (TF1 format, written by another tool);
the expected answers are the ones tensorflow_model_server_test.py asserts.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import requests

from tests.helpers import TFSERVING_TESTDATA

pytestmark = pytest.mark.integration


def call(fleet: dict, path: str, body: Any = None) -> requests.Response:
    url = f"{fleet['url']}/v1/models/{path}"
    if body is None:
        return requests.get(url, timeout=60)
    return requests.post(url, data=json.dumps(body), timeout=60)


def test_predict_row_and_columnar_like_tf_serving(fleet: dict) -> None:
    assert call(fleet, "half-plus-two:predict", {"instances": [2.0, 3.0, 4.0]}).json() == {
        "predictions": [3.0, 3.5, 4.0]
    }
    assert call(fleet, "half-plus-two:predict", {"inputs": [2.0, 3.0, 4.0]}).json() == {
        "outputs": [3.0, 3.5, 4.0]
    }
    # Named, full rank, and an explicit signature.
    body = {"signature_name": "serving_default", "instances": [{"x": [1.0]}]}
    assert call(fleet, "half-plus-two:predict", body).json() == {"predictions": [[2.5]]}


def test_classify_and_regress_like_tf_serving(fleet: dict) -> None:
    classify = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    assert call(fleet, "half-plus-two:classify", classify).json() == {"results": [[["", 3.0]]]}
    regress = {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}
    assert call(fleet, "half-plus-two:regress", regress).json() == {"results": [3.0]}
    # context features join every example; an example's own features win.
    with_context = {
        "signature_name": "regress_x_to_y",
        "context": {"x": 10.0},
        "examples": [{}, {"x": 4.0}],
    }
    assert call(fleet, "half-plus-two:regress", with_context).json() == {"results": [7.0, 4.0]}


def test_classify_needs_a_signature_of_examples_in_and_classes_or_scores_out(fleet: dict) -> None:
    # TF Serving checks the signature's tensors (one input 'inputs'; 'classes'/'scores' or
    # 'outputs' out), not its method name, unless --enable_signature_method_name_check.
    response = call(fleet, "half-plus-two:classify", {"examples": [{"x": 2.0}]})
    assert response.status_code == 400
    assert "exactly one input named 'inputs'" in response.json()["error"]
    response = call(fleet, "digits:regress", {"examples": [{"x": 2.0}]})
    assert response.status_code == 400
    assert "cannot regress" in response.json()["error"]
    regress_with_classify = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    response = call(fleet, "half-plus-two:regress", regress_with_classify)
    assert response.status_code == 400
    assert "exactly one output named 'outputs'" in response.json()["error"]


def test_status_and_metadata_like_tf_serving(fleet: dict) -> None:
    assert call(fleet, "half-plus-two").json() == {
        "model_version_status": [
            {
                "version": "123",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    metadata = call(fleet, "half-plus-two/metadata").json()
    expected = json.loads((TFSERVING_TESTDATA / "half_plus_two_model_metadata.json").read_text())
    expected["model_spec"]["name"] = "half-plus-two"
    assert metadata == expected  # dict equality: object key order aside


def test_versions_paths(fleet: dict) -> None:
    # Version 124 is the latest of the two; the default policy serves only it.
    assert (
        call(fleet, "two-versions/versions/124").json()["model_version_status"][0]["version"]
        == "124"
    )
    ok = call(fleet, "two-versions/versions/124:predict", {"instances": [2.0]})
    assert ok.json() == {"predictions": [3.0]}
    missing = call(fleet, "two-versions/versions/123:predict", {"instances": [2.0]})
    assert missing.status_code == 404 and "version 123" in missing.json()["error"]
    assert call(fleet, "two-versions/versions/123").status_code == 404
    metadata = call(fleet, "two-versions/versions/124/metadata").json()
    assert metadata["model_spec"]["version"] == "124"
    label = call(fleet, "two-versions/labels/stable:predict", {"instances": [2.0]})
    assert label.status_code == 404 and "label 'stable'" in label.json()["error"]


def test_several_named_inputs_and_outputs_with_bytes(fleet: dict) -> None:
    who = base64.b64encode(b"ray").decode()
    rows = {
        "instances": [
            {"x": [1.0, 2.0], "k": 2, "who": {"b64": who}},
            {"x": [0.5, 0.5], "k": 3, "who": "tf"},
        ]
    }
    assert call(fleet, "multi:predict", rows).json() == {
        "predictions": [
            {"total": 6.0, "k_twice": 4, "greeting": "hello ray"},
            {"total": 3.0, "k_twice": 6, "greeting": "hello tf"},
        ]
    }
    columns = {"inputs": {"x": [[1.0, 1.0]], "k": [5], "who": ["you"]}}
    assert call(fleet, "multi:predict", columns).json() == {
        "outputs": {"total": [10.0], "k_twice": [10], "greeting": ["hello you"]}
    }


def test_nan_and_infinity_round_trip(fleet: dict) -> None:
    response = requests.post(
        f"{fleet['url']}/v1/models/half-plus-two:predict",
        data='{"instances": [NaN, Infinity, -Infinity]}',
        timeout=60,
    )
    assert response.status_code == 200
    assert response.text == '{"predictions":[NaN,Infinity,-Infinity]}'


def test_text_classification_model(fleet: dict) -> None:
    response = call(fleet, "sentiment:predict", {"instances": ["great film", "awful film"]})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [set(p) for p in predictions] == [{"label", "score"}] * 2
    assert all(
        p["label"] in ("negative", "positive") and 0.5 <= p["score"] <= 1 for p in predictions
    )


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        (
            "multi:predict",
            {"instances": [{"x": [1.0, 2.0], "k": 1.5, "who": "a"}]},
            400,
            "integers",
        ),
        ("multi:predict", {"instances": [{"x": [1.0, 2.0], "k": 1}]}, 400, "missing input"),
        ("multi:predict", {"inputs": {"x": [[1.0, 2.0]], "k": [1, 2], "who": ["a"]}}, 400, "rows"),
        ("half-plus-two:regress", {"examples": []}, 400, "non-empty list"),
        ("half-plus-two:regress", {"examples": [{"x": {"y": 1}}]}, 400, "contains an object"),
        ("half-plus-two:regress", {"examples": [{"x": 1}], "context": 3}, 400, "'context'"),
        # TF Serving answers bad paths and unknown signatures with INVALID_ARGUMENT: 400.
        ("half-plus-two:explain", {"instances": [1.0]}, 400, "Malformed request"),
        ("half-plus-two/versions/abc:predict", {"instances": [1.0]}, 400, "Malformed request"),
        (
            "half-plus-two:predict",
            {"signature_name": "nope", "instances": [1.0]},
            400,
            "no signature 'nope'",
        ),
        (
            "half-plus-two:regress",
            {"signature_name": "nope", "examples": [{"x": 1.0}]},
            400,
            "no signature 'nope'",
        ),
        ("nope:predict", {"instances": [1.0]}, 404, "not found"),
        ("half-plus-two/versions/7:predict", {"instances": [1.0]}, 404, "version 7"),
    ],
)
def test_tfserving_errors_name_the_problem(
    fleet: dict, path: str, body: Any, status: int, fragment: str
) -> None:
    response = call(fleet, path, body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]
