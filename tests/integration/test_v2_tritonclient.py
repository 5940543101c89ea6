"""The Open Inference Protocol, driven with the real `tritonclient.http` client.

tritonclient sends and asks for binary tensor data by default; JSON data is checked too.
"""

from __future__ import annotations

from urllib.parse import urlparse

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(fleet: dict) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=urlparse(fleet["url"]).netloc, network_timeout=120)


def multi_inputs(binary: bool) -> list[triton.InferInput]:
    x = triton.InferInput("x", [2, 2], "FP32")
    x.set_data_from_numpy(np.array([[1, 2], [0.5, 0.5]], dtype=np.float32), binary_data=binary)
    k = triton.InferInput("k", [2], "INT64")
    k.set_data_from_numpy(np.array([2, 3], dtype=np.int64), binary_data=binary)
    who = triton.InferInput("who", [2], "BYTES")
    who.set_data_from_numpy(np.array([b"ray", b"tf"], dtype=np.object_), binary_data=binary)
    return [x, k, who]


def test_server_liveness_readiness_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    # The fleet includes a model that cannot load, so the server is not ready (strict).
    assert not client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "serve-app"
    assert "binary_tensor_data" in metadata["extensions"]


def test_model_readiness(client: triton.InferenceServerClient) -> None:
    assert client.is_model_ready("multi")
    assert client.is_model_ready("two-versions", "124")
    assert not client.is_model_ready("two-versions", "123")
    assert not client.is_model_ready("broken")
    assert not client.is_model_ready("no-such-model")


def test_model_metadata_from_signatures(client: triton.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("multi")
    assert metadata["name"] == "multi"
    assert metadata["versions"] == ["1"]
    assert metadata["platform"] == "tensorflow_savedmodel"
    assert sorted(metadata["inputs"], key=lambda t: t["name"]) == [
        {"name": "k", "datatype": "INT64", "shape": [-1]},
        {"name": "who", "datatype": "BYTES", "shape": [-1]},
        {"name": "x", "datatype": "FP32", "shape": [-1, 2]},
    ]
    minilm = client.get_model_metadata("minilm")
    assert minilm["platform"] == "transformers"
    assert minilm["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert minilm["outputs"] == [{"name": "embeddings", "datatype": "FP32", "shape": [-1, 384]}]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_fp32_int64_bytes_with_requested_outputs(
    client: triton.InferenceServerClient, binary: bool
) -> None:
    outputs = [
        triton.InferRequestedOutput("total", binary_data=binary),
        triton.InferRequestedOutput("greeting", binary_data=binary),
    ]
    result = client.infer("multi", multi_inputs(binary), outputs=outputs, request_id="42")
    np.testing.assert_allclose(result.as_numpy("total"), [6.0, 3.0])
    # tritonclient gives bytes for binary BYTES data and str for JSON data.
    greetings = [g if isinstance(g, bytes) else g.encode() for g in result.as_numpy("greeting")]
    assert greetings == [b"hello ray", b"hello tf"]
    assert result.as_numpy("k_twice") is None  # not requested, not returned
    response = result.get_response()
    assert response["model_name"] == "multi" and response["model_version"] == "1"
    assert response["id"] == "42"


def test_infer_all_outputs_and_versioned(client: triton.InferenceServerClient) -> None:
    result = client.infer("multi", multi_inputs(True), model_version="1")
    assert result.as_numpy("k_twice").tolist() == [4, 6]
    assert result.as_numpy("k_twice").dtype == np.int64
    x = triton.InferInput("x", [3, 1], "FP32")
    x.set_data_from_numpy(np.array([[2.0], [3.0], [4.0]], dtype=np.float32))
    halves = client.infer("two-versions", [x], model_version="124")
    np.testing.assert_allclose(halves.as_numpy("y"), [[3.0], [3.5], [4.0]])


def test_text_models_take_bytes(client: triton.InferenceServerClient) -> None:
    text = triton.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([b"a sentence", b"another one"], dtype=np.object_))
    embeddings = client.infer("minilm", [text]).as_numpy("embeddings")
    assert embeddings.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)

    prompt = triton.InferInput("text", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"Once upon a time"], dtype=np.object_))
    budget = triton.InferInput("max_new_tokens", [1], "INT32")
    budget.set_data_from_numpy(np.array([4], dtype=np.int32))
    generated = client.infer("tiny-gpt2", [prompt, budget], parameters={"temperature": 0})
    assert generated.as_numpy("generated_text")[0].startswith(b"Once upon a time")


@pytest.mark.parametrize(
    ("model", "case", "fragment"),
    [
        ("multi", "wrong_dtype", "has datatype FP64, the model expects FP32"),
        ("multi", "unknown_output", "unknown output(s) ['nope']"),
        ("no-such-model", "wrong_dtype", "not found"),
        ("broken", "wrong_dtype", "not available"),
    ],
)
def test_errors_reach_the_client(
    client: triton.InferenceServerClient, model: str, case: str, fragment: str
) -> None:
    x = triton.InferInput("x", [2, 2], "FP64")
    x.set_data_from_numpy(np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float64))
    args = [model, [x, *multi_inputs(True)[1:]]]
    outputs = None
    if case == "unknown_output":
        args = [model, multi_inputs(True)]
        outputs = [triton.InferRequestedOutput("nope")]
    with pytest.raises(InferenceServerException) as error:
        client.infer(*args, outputs=outputs)
    assert fragment in str(error.value)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (
            {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}]},
            "input 'x': shape [2, 2] needs 4 values, 'data' has 3",
        ),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP8", "data": [1]}]}, "datatype"),
        ({"inputs": []}, "non-empty list"),
        ({"inputs": [{"name": "k", "shape": [1], "datatype": "INT64", "data": [1.5]}]}, "integers"),
        (
            {
                "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}],
                "x": 1,
            },
            "unknown key",
        ),
    ],
)
def test_malformed_infer_bodies_are_400(fleet: dict, body: dict, fragment: str) -> None:
    response = requests.post(f"{fleet['url']}/v2/models/multi/infer", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]


def test_health_bodies(fleet: dict) -> None:
    live = requests.get(f"{fleet['url']}/v2/health/live", timeout=30)
    assert live.status_code == 200 and live.json() == {"live": True}
    ready = requests.get(f"{fleet['url']}/v2/health/ready", timeout=30)
    assert ready.status_code == 503 and ready.json() == {"ready": False}
