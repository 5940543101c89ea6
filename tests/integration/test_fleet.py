"""The first end-to-end service: a fleet of real models behind one ingress, over real HTTP."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from ray import serve

from serve_app.examples import digits_sample
from tests.helpers import post_many, wait_for
from tests.integration.conftest import APP_START_TIMEOUT_S, deploy, deploy_and_wait, undeploy
from tests.integration.fleet import MAX_REQUEST_BYTES

pytestmark = pytest.mark.integration

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "A cheetah is running behind its prey.",
    "Ray Serve batches requests from many clients.",
    "The weather is lovely today.",
]


def predict(fleet: dict, model: str, body: Any) -> requests.Response:
    return requests.post(f"{fleet['url']}/v1/models/{model}:predict", json=body, timeout=120)


def stats(fleet: dict, model: str) -> dict:
    response = requests.get(f"{fleet['url']}/v2/models/{model}/stats", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


# --- each model kind answers --------------------------------------------------------------


def test_digits_keras_classifier_serves_latest_version(fleet: dict) -> None:
    from sklearn.datasets import load_digits

    samples = digits_sample(8)
    response = predict(fleet, "digits", {"instances": samples})
    assert response.status_code == 200, response.text
    probabilities = np.array(response.json()["predictions"])
    assert probabilities.shape == (8, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # digits_sample takes held-out images; version 2 is the well-trained one.
    labels = _held_out_labels(load_digits(), samples)
    assert (probabilities.argmax(axis=1) == labels).mean() >= 0.75

    status = requests.get(f"{fleet['url']}/v1/models/digits", timeout=30).json()
    assert status == {
        "model_version_status": [
            {
                "version": "2",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    metadata = requests.get(f"{fleet['url']}/v1/models/digits/metadata", timeout=30).json()
    assert metadata["model_spec"] == {"name": "digits", "signature_name": "", "version": "2"}
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["pixels"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in signature["inputs"]["pixels"]["tensor_shape"]["dim"]] == ["-1", "64"]
    assert list(signature["outputs"]) == ["probabilities"]


def _held_out_labels(digits: Any, samples: list[list[float]]) -> np.ndarray:
    images = digits.data / 16.0
    return np.array(
        [digits.target[np.flatnonzero(np.all(np.isclose(images, s), axis=1))[0]] for s in samples]
    )


def test_minilm_embeddings_are_normalised_and_meaningful(fleet: dict) -> None:
    response = predict(fleet, "minilm", {"instances": SENTENCES[:3]})
    assert response.status_code == 200, response.text
    embeddings = np.array(response.json()["predictions"])
    assert embeddings.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    similar, unrelated = embeddings[0] @ embeddings[1], embeddings[0] @ embeddings[2]
    assert similar > 0.5 > unrelated


def test_tiny_gpt2_generates_deterministically(fleet: dict) -> None:
    body = {"instances": [{"text": "Once upon a time", "max_new_tokens": 6}]}
    first = predict(fleet, "tiny-gpt2", body)
    assert first.status_code == 200, first.text
    (text,) = first.json()["predictions"]
    assert text.startswith("Once upon a time") and len(text) > len("Once upon a time")
    assert predict(fleet, "tiny-gpt2", body).json() == first.json()
    plain = predict(fleet, "tiny-gpt2", {"instances": ["Once upon a time"]})
    assert plain.status_code == 200, plain.text


def test_tfserving_savedmodel_row_and_columnar(fleet: dict) -> None:
    rows = predict(fleet, "half-plus-two", {"instances": [2.0, 3.0, 4.0]})
    assert rows.json() == {"predictions": [3.0, 3.5, 4.0]}
    columns = predict(fleet, "half-plus-two", {"inputs": {"x": [[2.0], [3.0]]}})
    assert columns.json() == {"outputs": [[3.0], [3.5]]}
    status = requests.get(f"{fleet['url']}/v1/models/half-plus-two", timeout=30).json()
    assert status["model_version_status"][0]["version"] == "123"


# --- batching -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "instances"),
    [("digits", digits_sample(48)), ("minilm", SENTENCES * 4)],
    ids=["digits", "minilm"],
)
def test_concurrent_requests_are_batched_with_results_equal_to_single_calls(
    fleet: dict, model: str, instances: list
) -> None:
    singles = [
        predict(fleet, model, {"instances": [x]}).json()["predictions"][0] for x in instances
    ]
    before = stats(fleet, model)["model_stats"][0]
    responses = post_many(
        f"{fleet['url']}/v1/models/{model}:predict",
        [{"instances": [x]} for x in instances],
        concurrency=len(instances),
    )
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses][:3]
    batched = [r.json()["predictions"][0] for r in responses]
    np.testing.assert_allclose(np.array(batched), np.array(singles), rtol=1e-4, atol=1e-5)

    after = stats(fleet, model)["model_stats"][0]
    assert after["inference_count"] - before["inference_count"] == len(instances)
    calls = after["execution_count"] - before["execution_count"]
    assert calls < len(instances), f"{len(instances)} requests took {calls} model calls"
    assert max(entry["batch_size"] for entry in after["batch_stats"]) > 1


def test_a_request_larger_than_the_batch_is_split_and_rejoined(fleet: dict) -> None:
    samples = digits_sample(40)  # max_batch_size is 16
    response = predict(fleet, "digits", {"instances": samples})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 40


def test_text_generation_batches_mixed_budgets(fleet: dict) -> None:
    bodies = [
        {"instances": [{"text": prompt, "max_new_tokens": budget}]}
        for prompt in ("The quick brown fox", "Once upon a time", "Models are served")
        for budget in (3, 5)
    ]
    singles = [predict(fleet, "tiny-gpt2", body).json() for body in bodies]
    together = post_many(f"{fleet['url']}/v1/models/tiny-gpt2:predict", bodies, len(bodies))
    assert [r.json() for r in together] == singles


# --- failures stay contained ----------------------------------------------------------------


def test_broken_model_answers_503_with_reason_while_others_answer(fleet: dict) -> None:
    response = predict(fleet, "broken", {"instances": [[1.0]]})
    assert response.status_code == 503
    error = response.json()["error"]
    assert "model 'broken'" in error and "failed to load" in error
    assert "Traceback" not in error and 'File "' not in error
    assert requests.get(f"{fleet['url']}/v1/models/broken", timeout=30).status_code == 503

    deployment = serve.status().applications["fleet"].deployments["broken"]
    assert deployment.status.value == "DEPLOY_FAILED"
    assert "failed to load" in deployment.message

    assert predict(fleet, "half-plus-two", {"instances": [1.0]}).status_code == 200
    assert predict(fleet, "minilm", {"instances": ["still serving"]}).status_code == 200


def test_unknown_model_is_404_listing_known_models(fleet: dict) -> None:
    response = predict(fleet, "nope", {"instances": [1.0]})
    assert response.status_code == 404
    assert "digits" in response.json()["error"] and "minilm" in response.json()["error"]


@pytest.mark.parametrize(
    ("model", "body", "status", "fragment"),
    [
        ("digits", {"instances": [[1.0, 2.0]]}, 400, "expects shape [-1, 64]"),
        ("digits", {"instances": ["seven"]}, 400, "expects float32 numbers, got strings"),
        ("digits", {"instances": [[1.0] * 64, [1.0]]}, 400, "ragged"),
        ("digits", {"instances": []}, 400, "non-empty list"),
        ("digits", {"instances": [[0.0] * 64], "inputs": [[0.0] * 64]}, 400, "exactly one of"),
        # TF Serving: an unknown signature is INVALID_ARGUMENT (400), unlike an unknown model.
        ("digits", {"signature_name": "nope", "instances": [[0.0] * 64]}, 400, "no signature"),
        ("digits", {"instances": [{"pixelz": [0.0] * 64}]}, 400, "unknown input"),
        ("minilm", {"instances": [1.0, 2.0]}, 400, "expects strings"),
        ("tiny-gpt2", {"instances": [{"text": "hi", "max_new_tokens": 0}]}, 400, "max_new_tokens"),
        ("tiny-gpt2", {"instances": [{"text": "hi", "max_new_tokens": 1.5}]}, 400, "integers"),
        ("half-plus-two", [1.0], 400, "JSON object"),
    ],
)
def test_bad_input_gets_a_clear_error(
    fleet: dict, model: str, body: Any, status: int, fragment: str
) -> None:
    response = predict(fleet, model, body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def test_malformed_json_and_oversized_bodies(fleet: dict) -> None:
    url = f"{fleet['url']}/v1/models/digits:predict"
    malformed = requests.post(url, data=b"{not json", timeout=30)
    assert malformed.status_code == 400
    assert "not valid JSON" in malformed.json()["error"]
    oversized = requests.post(url, data=b"[" + b"0," * MAX_REQUEST_BYTES + b"0]", timeout=30)
    assert oversized.status_code == 413
    assert str(MAX_REQUEST_BYTES) in oversized.json()["error"]


def test_unknown_version_is_404(fleet: dict) -> None:
    url = f"{fleet['url']}/v1/models/digits/versions/7:predict"
    response = requests.post(url, json={"instances": digits_sample(1)}, timeout=30)
    assert response.status_code == 404
    assert "version 7" in response.json()["error"]


# --- hot reconfiguration and config errors --------------------------------------------------


def test_batching_changes_in_place_through_user_config(fleet: dict) -> None:
    """A redeploy whose Serve config changes the model's user_config reconfigures, no restart."""
    before = stats(fleet, "digits")
    deploy(
        "fleet",
        fleet["args"],
        deployments=[
            {
                "name": "digits",
                "user_config": {"batching": {"max_batch_size": 4, "batch_wait_timeout_s": 0.05}},
            }
        ],
    )
    after = wait_for(
        lambda: (s := stats(fleet, "digits"))["batching"]["max_batch_size"] == 4 and s,
        120,
        "digits to pick up max_batch_size 4",
    )
    same = ("id", "pid")
    assert [after["replica"][k] for k in same] == [before["replica"][k] for k in same], "restarted"
    assert after["model_stats"][0]["inference_count"] >= before["model_stats"][0]["inference_count"]

    responses = post_many(
        f"{fleet['url']}/v1/models/digits:predict",
        [{"instances": [x]} for x in digits_sample(16)],
        concurrency=16,
    )
    assert all(r.status_code == 200 for r in responses)
    sizes = [e["batch_size"] for e in stats(fleet, "digits")["model_stats"][0]["batch_stats"]]
    new_sizes = set(sizes) - {e["batch_size"] for e in before["model_stats"][0]["batch_stats"]}
    assert all(size <= 4 for size in new_sizes), sizes


def test_invalid_user_config_names_the_bad_key(fleet: dict) -> None:
    deploy(
        "fleet",
        fleet["args"],
        deployments=[{"name": "half-plus-two", "user_config": {"batching": {"max_batch_sise": 4}}}],
    )

    def failed_message() -> str:
        deployment = serve.status().applications["fleet"].deployments["half-plus-two"]
        return deployment.message if "max_batch_sise" in deployment.message else ""

    message = wait_for(failed_message, 120, "the bad user_config to be reported")
    assert "unknown key" in message
    deploy("fleet", fleet["args"])  # restore for the tests that follow
    assert predict(fleet, "digits", {"instances": digits_sample(1)}).status_code == 200


def test_config_error_names_the_bad_key_and_model(serve_url: str, model_repo: Path) -> None:
    args = {
        "models": [
            {
                "name": "digits",
                "framework": "tensorflow",
                "uri": str(model_repo / "digits"),
                "batching": {"max_batch_sise": 8},
            }
        ]
    }
    try:
        app = deploy_and_wait("badconfig", args, expect=("DEPLOY_FAILED",))
        assert "model 'digits'" in app.message
        assert "unknown key 'max_batch_sise'" in app.message
        assert "max_batch_size" in app.message  # names what is allowed
    finally:
        # A failed application left in the config is built again at every later deploy.
        undeploy("badconfig")


def test_a_request_waiting_on_a_failing_model_gets_503_not_a_hang(
    serve_url: str, tmp_path: Path
) -> None:
    """Whether the request arrives before or after Serve gives up on the model, it ends."""
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.keras").write_bytes(b"corrupt")
    args = {"models": [{"name": "late", "framework": "tensorflow", "uri": str(tmp_path)}]}
    deploy("late", args)
    seen: list[str] = []

    def routed() -> bool:  # the fleet's ingress at "/" answers until the proxy routes /late
        answer = requests.get(f"{serve_url}/late/v1/models/x", timeout=5)
        seen[:] = [f"{answer.status_code} {answer.text[:300]}"]
        # Its own ingress: it knows 'late' (and any model application of the cluster, such
        # as another test's), where the fleet's does not.
        return re.search(r"known models: [^)]*\blate\b", answer.text) is not None

    try:
        # Its model's replicas fail to start (each try imports TensorFlow): on 2 busy cores
        # the ingress replica can take minutes to start beside them.
        try:
            wait_for(routed, APP_START_TIMEOUT_S, "the ingress of application 'late'")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its last answer: {seen}") from None
        response = requests.post(
            f"{serve_url}/late/v1/models/late:predict", json={"instances": [[1.0]]}, timeout=120
        )
        assert response.status_code == 503
        assert "failed to load" in response.json()["error"]
    finally:
        undeploy("late")
