"""Bring your own model, served by real Ray Serve: Python models (the contract's hooks, their
failures, versions, pools, every protocol), Keras files as people have them, and ONNX.

One application (``byom``) holds them all, beside two models that cannot load (a class whose
``__init__`` raises, a class that cannot be imported): the others must not notice.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
import tritonclient.grpc as triton
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serve_app.examples import build_minilm_onnx
from tests.helpers import wait_for
from tests.integration.conftest import deploy_and_wait, undeploy
from tests.user_models.scorer import RAISE_IN_POSTPROCESS, RAISE_IN_PREDICT, write_version

pytestmark = pytest.mark.integration

APP = "byom"
METADATA = (("application", APP),)
TIMEOUT = 120
WORKING = (
    "scorer",
    "plain",
    "keras-h5",
    "keras-renamed",
    "keras-export",
    "minilm-onnx",
    "scorers",
)
SCORER = "tests.user_models.scorer"
SMALL = {"num_cpus": 0.25}
BATCHES = {"max_batch_size": 16, "batch_wait_timeout_s": 0.05}


def keras_classifier() -> Any:
    """A small Keras classifier with seeded random weights: 4 numbers in, 3 classes out."""
    import keras

    keras.utils.set_random_seed(7)
    inputs = keras.Input(shape=(4,), name="features", dtype="float32")
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax", name="classes")(hidden)
    return keras.Model(inputs, outputs)


def build_keras_files(root: Path) -> Any:
    """The same model three ways: legacy HDF5 under the name a Flask app gives it, a Keras
    archive not called model.keras, and a SavedModel written by ``model.export``."""
    model = keras_classifier()
    for name in ("keras-h5", "keras-renamed"):
        (root / name / "1").mkdir(parents=True)
    model.save(root / "keras-h5" / "1" / "my_model.h5")
    model.save(root / "keras-renamed" / "1" / "classifier.keras")
    model.export(str(root / "keras-export" / "1"), verbose=False)
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, model_repo: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("byom")
    write_version(root / "scorer", 1, 2.0)
    write_version(root / "plain", 1, 3.0)
    write_version(root / "init-fails", 1, 1.0)
    write_version(root / "import-fails", 1, 1.0)
    for index in range(3):  # a pool of Python models: tenant i multiplies by i + 1
        write_version(root / "pool" / f"tenant-{index}", 1, float(index + 1))
    keras_model = build_keras_files(root)
    build_minilm_onnx(root)
    return {"root": root, "keras": keras_model}


def byom_args(root: Path) -> dict[str, Any]:
    def python(name: str, class_: str, **more: Any) -> dict[str, Any]:
        block = {"class": class_, **more.pop("python", {})}
        return {
            "name": name,
            "framework": "python",
            "python": block,
            "uri": str(root / name),
            "resources": SMALL,
            **more,
        }

    def keras(name: str) -> dict[str, Any]:
        return {
            "name": name,
            "framework": "tensorflow",
            "uri": str(root / name),
            "resources": SMALL,
        }

    return {
        "models": [
            python(
                "scorer",
                f"{SCORER}:Scorer",
                python={"options": {"bias": 1.0}},
                batching=BATCHES,
                poll_interval_s=0.5,
            ),
            python("plain", f"{SCORER}:PlainScorer"),
            python("init-fails", f"{SCORER}:FailsInInit"),
            python("import-fails", "tests.user_models.no_such_module:Scorer"),
            keras("keras-h5"),
            keras("keras-renamed"),
            keras("keras-export"),
            {
                "name": "minilm-onnx",
                "framework": "onnx",
                "task": "feature-extraction",
                "uri": str(root / "minilm-onnx"),
                "resources": SMALL,
            },
        ],
        "pools": [
            {
                "name": "scorers",
                "framework": "python",
                "python": {"class": f"{SCORER}:Scorer"},
                "uri": str(root / "pool"),
                "max_models_per_replica": 2,
                "resources": SMALL,
            }
        ],
    }


@pytest.fixture(scope="module")
def url(serve_url: str, models: dict[str, Any]) -> Iterator[str]:
    # Two models cannot load, so the application as a whole reports DEPLOY_FAILED.
    deploy_and_wait(APP, byom_args(models["root"]), expect=("DEPLOY_FAILED", "RUNNING"))
    base = f"{serve_url}/{APP}"
    wait_for(
        lambda: all(requests.get(f"{base}/v1/models/{m}", timeout=10).ok for m in WORKING[:-1]),
        240,
        "the byom models to be served",
    )
    yield base
    undeploy(APP)


def predict(url: str, model: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{url}/v1/models/{model}:predict", json=body, timeout=TIMEOUT)


# --- Python models: the hooks ---------------------------------------------------------------


def test_instances_go_through_preprocess_predict_and_postprocess(url: str) -> None:
    answer = predict(url, "scorer", {"instances": [{"x": [1, 2, 3, 4]}, [0, 0, 0, 1]]})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "predictions": [
            {"y": [3.0, 5.0, 7.0, 9.0], "total": 24.0},
            {"y": [1.0, 1.0, 1.0, 3.0], "total": 6.0},
        ]
    }


def concurrently(url: str, bodies: list[dict[str, Any]]) -> list[requests.Response]:
    """Send all bodies at once, so they share coalesced calls and batches."""
    barrier = threading.Barrier(len(bodies))

    def send(body: dict[str, Any]) -> requests.Response:
        barrier.wait()
        return predict(url, "scorer", body)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(send, bodies))


def test_a_refused_instance_fails_its_request_alone(url: str) -> None:
    bodies = [{"instances": [[i, i, i, i]]} for i in range(12)]
    bodies[5] = {"instances": [[1, 2, 3]]}
    answers = concurrently(url, bodies)
    bad = answers[5]
    assert bad.status_code == 400, bad.text
    assert "refused instance 0: x must be 4 numbers, got shape [3]" in bad.json()["error"]
    for i, answer in enumerate(answers):
        if i != 5:
            assert answer.status_code == 200, answer.text
            assert answer.json()["predictions"][0]["total"] == 4 * (2 * i + 1)


@pytest.mark.parametrize(
    ("poison", "step", "error"),
    [
        (RAISE_IN_PREDICT, "predict", "RuntimeError"),
        (RAISE_IN_POSTPROCESS, "postprocess", "KeyError"),
    ],
)
def test_a_raising_predict_or_postprocess_fails_only_its_request(
    url: str, poison: float, step: str, error: str
) -> None:
    bodies = [{"instances": [[i, 0, 0, 0]]} for i in range(8)]
    bodies[3] = {"instances": [[poison, 0, 0, 0]]}
    answers = concurrently(url, bodies)
    failed = answers[3]
    assert failed.status_code == 500, failed.text
    message = failed.json()["error"]
    assert "model 'scorer'" in message and error in message, message
    if step == "postprocess":
        assert "postprocess" in message
    for i, answer in enumerate(answers):
        if i != 3:
            assert answer.status_code == 200, answer.text
            assert answer.json()["predictions"][0]["y"][0] == 2 * i + 1
    # The replica keeps serving.
    assert predict(url, "scorer", {"instances": [[1, 1, 1, 1]]}).status_code == 200


def test_a_model_without_hooks_is_answered_like_any_model(url: str) -> None:
    answer = predict(url, "plain", {"instances": [[1, 1, 1, 1], [2, 2, 2, 2]]})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "predictions": [
            {"y": [3.0, 3.0, 3.0, 3.0], "label": "big"},
            {"y": [6.0, 6.0, 6.0, 6.0], "label": "big"},
        ]
    }
    columns = predict(url, "plain", {"inputs": {"x": [[0, 0, 0, 1]]}})
    assert columns.json() == {"outputs": {"y": [[0.0, 0.0, 0.0, 3.0]], "label": ["small"]}}


# --- Python models: every protocol ----------------------------------------------------------


def test_metadata_comes_from_the_declared_signature(url: str) -> None:
    v2 = requests.get(f"{url}/v2/models/scorer", timeout=TIMEOUT).json()
    assert v2["platform"] == "python"
    assert v2["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert v2["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]
    tf_meta = requests.get(f"{url}/v1/models/scorer/metadata", timeout=TIMEOUT).json()
    signature = tf_meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert set(signature["inputs"]) == {"x"}


def test_v2_rest_rows_reach_preprocess_and_answer_with_the_outputs(url: str) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": [1] * 8}]}
    answer = requests.post(f"{url}/v2/models/scorer/infer", json=body, timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    assert output["name"] == "y" and output["shape"] == [2, 4]
    assert output["data"] == [3.0] * 8
    bad = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [666] * 4}]}
    failed = requests.post(f"{url}/v2/models/scorer/infer", json=bad, timeout=TIMEOUT)
    assert failed.status_code == 500 and "RuntimeError" in failed.json()["error"]


def test_grpc_predict_and_model_infer_serve_a_python_model(grpc_port: int, url: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "scorer"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones((3, 4), np.float32)))
        answer = stub.Predict(request, metadata=METADATA, timeout=TIMEOUT)
        assert tf.make_ndarray(answer.outputs["y"]).tolist() == [[3.0] * 4] * 3
    client = triton.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    try:
        tensor = triton.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.array([[1, 2, 3, 4]], np.float32))
        result = client.infer("scorer", [tensor], headers=dict(METADATA))
        assert result.as_numpy("y").tolist() == [[3.0, 5.0, 7.0, 9.0]]
        with pytest.raises(triton.InferenceServerException, match="x must be 4 numbers"):
            short = triton.InferInput("x", [1, 3], "FP32")
            short.set_data_from_numpy(np.array([[1, 2, 3]], np.float32))
            client.infer("scorer", [short], headers=dict(METADATA))
    finally:
        client.close()


def test_a_pool_of_python_models_serves_each_its_own(url: str) -> None:
    for index in range(3):
        answer = predict(url, f"tenant-{index}", {"instances": [[1, 1, 1, 1]]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"][0]["total"] == 4.0 * (index + 1)


# --- Python models: load failures and versions -----------------------------------------------


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("init-fails", "FileNotFoundError: weights.bin is missing"),
        ("import-fails", "cannot import python.class 'tests.user_models.no_such_module:Scorer'"),
    ],
)
def test_a_class_that_cannot_load_is_503_with_the_reason(url: str, model: str, reason: str) -> None:
    answer = predict(url, model, {"instances": [[1, 1, 1, 1]]})
    assert answer.status_code == 503, answer.text
    assert reason in answer.json()["error"]
    assert predict(url, "scorer", {"instances": [[1, 1, 1, 1]]}).status_code == 200


def test_a_new_version_takes_over_without_a_failed_request(url: str, models: dict) -> None:
    root: Path = models["root"] / "scorer"
    stop = threading.Event()
    answers: list[tuple[int, Any]] = []

    def traffic() -> None:
        while not stop.is_set():
            response = predict(url, "scorer", {"instances": [[1, 0, 0, 0]]})
            body = response.json()
            answers.append((response.status_code, body))

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        wait_for(lambda: len(answers) > 10, 60, "traffic on version 1")
        # Written aside, then renamed into place, as a model export should be.
        staging = write_version(models["root"] / "staging", 2, 5.0)
        os.rename(staging, root / "2")
        wait_for(
            lambda: answers[-1][1].get("predictions", [{}])[0].get("total") == 9.0,
            120,
            "answers from version 2 (x * 5 + 1: [6, 1, 1, 1])",
        )
    finally:
        stop.set()
        sender.join()
    assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:3]
    totals = [body["predictions"][0]["total"] for _, body in answers]
    assert set(totals) == {6.0, 9.0}
    assert totals == sorted(totals)


# --- Keras files as people have them --------------------------------------------------------


@pytest.mark.parametrize("model", ["keras-h5", "keras-renamed", "keras-export"])
def test_keras_files_are_served(url: str, models: dict, model: str) -> None:
    rows = np.random.default_rng(1).random((5, 4), dtype=np.float32)
    expected = models["keras"].predict(rows, verbose=0)
    answer = predict(url, model, {"instances": rows.tolist()})
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(np.array(answer.json()["predictions"]), expected, atol=1e-5)


# --- ONNX Runtime -----------------------------------------------------------------------------


def test_onnx_minilm_embeddings_match_the_torch_model(url: str, model_repo: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    topics = ("the weather", "a cat on a mat", "GPU prices", "a long train journey")
    sentences = [f"Sentence {i} is about {topics[i % 4]}." * (1 + i % 3) for i in range(100)]
    answer = predict(url, "minilm-onnx", {"instances": sentences})
    assert answer.status_code == 200, answer.text
    served = np.array(answer.json()["predictions"])
    source = model_repo / "minilm" / "1"
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    model = AutoModel.from_pretrained(source, local_files_only=True).eval()
    with torch.no_grad():
        encoded = tokenizer(sentences, padding=True, truncation=True, return_tensors="pt")
        hidden = model(**encoded).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).float()
        reference = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    cosine = (served * reference).sum(1) / (
        np.linalg.norm(served, axis=1) * np.linalg.norm(reference, axis=1)
    )
    assert served.shape == (100, 384)
    assert float((1 - cosine).max()) < 1e-4
    v2 = requests.get(f"{url}/v2/models/minilm-onnx", timeout=TIMEOUT).json()
    assert v2["platform"] == "onnxruntime_onnx"
