"""Every TF Serving test SavedModel behind real Ray Serve, answering what TF Serving answers.

The application is TF Serving's own good_model_config.txt and batching_config.txt, imported
with `serve-app import-tfserving` (half_plus_two, half_plus_three), plus the TF2 export, the
stateful counter with a warm-up file, a model whose newer version has a bad warm-up file,
and bad_half_plus_two. Expected answers: tensorflow_model_server_test.py, predict_impl_test.cc
and the golden metadata JSON files.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from ray import serve

from serve_app.tfserving_import import import_tfserving
from tests.helpers import TFSERVING_TESTDATA, wait_for
from tests.integration.conftest import deploy_and_wait, undeploy
from tests.unit.test_tfserving_warmup import predict_log, writable_copy, write_warmup

pytestmark = pytest.mark.integration

APP = "tfs"
SERVING = ("half_plus_two", "half_plus_three", "tf2", "counter", "warm-bad", "Ingress")
SMALL = {"num_cpus": 0.25}


def app_args(root: Path) -> dict[str, Any]:
    """TF Serving's example config, imported, plus the other test models."""
    env = {
        "TEST_HALF_PLUS_TWO_DIR": str(TFSERVING_TESTDATA / "saved_model_half_plus_two_cpu"),
        "TEST_HALF_PLUS_THREE_DIR": str(TFSERVING_TESTDATA / "saved_model_half_plus_three"),
    }
    imported = import_tfserving(
        (TFSERVING_TESTDATA / "good_model_config.txt").read_text(),
        (TFSERVING_TESTDATA / "batching_config.txt").read_text(),
        poll_interval_s=0,
        environ=env,
    )
    counter = writable_copy("saved_model_counter", root / "counter").parent
    # Warm-up records run before the version serves: the counter starts at 3 + 10 = 13.
    write_warmup(
        counter / "00000123",
        [predict_log("incr_counter")] * 3 + [predict_log("incr_counter_by", delta=10.0)],
    )
    warm_bad = writable_copy("saved_model_half_plus_two_cpu", root / "warm-bad").parent
    shutil.copytree(warm_bad / "00000123", warm_bad / "00000124")
    (warm_bad / "00000124" / "assets.extra").mkdir()
    (warm_bad / "00000124" / "assets.extra" / "tf_serving_warmup_requests").write_text("x=2\n")

    def model(name: str, uri: Path, **more: Any) -> dict[str, Any]:
        return {
            "name": name,
            "framework": "tensorflow",
            "uri": str(uri),
            "resources": SMALL,
            **more,
        }

    models = [{**entry, "resources": SMALL} for entry in imported.args["models"]]
    models += [
        model("tf2", TFSERVING_TESTDATA / "saved_model_half_plus_two_tf2_cpu"),
        model("counter", counter),
        model("warm-bad", warm_bad, version_policy={"all": True}),
        model("bad", TFSERVING_TESTDATA / "bad_half_plus_two"),
    ]
    return {"models": models}


@pytest.fixture(scope="module")
def url(serve_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    args = app_args(tmp_path_factory.mktemp("tfserving_models"))
    # bad_half_plus_two cannot load, so the application reports DEPLOY_FAILED as a whole.
    deploy_and_wait(APP, args, expect=("DEPLOY_FAILED", "RUNNING"))
    wait_for(
        lambda: all(
            serve.status().applications[APP].deployments[name].status.value == "HEALTHY"
            for name in SERVING
        ),
        240,
        "the TF Serving test models to be HEALTHY",
    )
    yield f"{serve_url}/{APP}/v1/models"
    undeploy(APP)


def call(url: str, path: str, body: Any = None) -> requests.Response:
    if body is None:
        return requests.get(f"{url}/{path}", timeout=60)
    return requests.post(f"{url}/{path}", data=json.dumps(body), timeout=60)


def test_tf_servings_example_model_config_serves_both_models(url: str) -> None:
    # testGoodModelConfig: half_plus_two answers 3.0 and half_plus_three 4.0 for x = 2.0.
    assert call(url, "half_plus_two:predict", {"instances": [2.0]}).json() == {"predictions": [3.0]}
    assert call(url, "half_plus_three:predict", {"instances": [2.0]}).json() == {
        "predictions": [4.0]
    }
    status = call(url, "half_plus_three").json()["model_version_status"]
    assert [(s["version"], s["state"]) for s in status] == [("123", "AVAILABLE")]


def test_half_plus_three_regresses_through_its_scalar_example_input(url: str) -> None:
    body = {"signature_name": "tensorflow/serving/regress", "examples": [{"x": 2.0}, {"x": 4.0}]}
    assert call(url, "half_plus_three:regress", body).json() == {"results": [4.0, 5.0]}


def test_the_tf2_export_classifies_regresses_and_predicts_like_tf_serving(url: str) -> None:
    # testClassifyTf2 / testRegressTf2.
    classify = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    assert call(url, "tf2:classify", classify).json() == {"results": [[["", 3.0]]]}
    regress = {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}
    assert call(url, "tf2:regress", regress).json() == {"results": [3.0]}
    # serving_default takes exactly one x ([1]): each request alone, answered at its rank.
    assert call(url, "tf2:predict", {"instances": [2.0]}).json() == {"predictions": [3.0]}
    too_many = call(url, "tf2:predict", {"instances": [2.0, 3.0]})
    assert too_many.status_code == 400 and "expects shape [1]" in too_many.json()["error"]


def test_tf2_metadata_is_tf_servings_tf2_golden(url: str) -> None:
    metadata = call(url, "tf2/metadata").json()
    golden = json.loads(
        (TFSERVING_TESTDATA / "saved_model_half_plus_two_tf2_2_versions_metadata.json").read_text()
    )
    assert metadata["model_spec"] == {"name": "tf2", "signature_name": "", "version": "123"}
    actual = metadata["metadata"]["signature_def"]["signature_def"]
    expected = golden["metadata"]["signature_def"]["signature_def"]
    # The one difference is this export's: serving_default has defaults (see the unit test).
    actual["serving_default"]["defaults"] = expected["serving_default"]["defaults"] = {}
    expected["__saved_model_init_op"].setdefault("defaults", {})
    assert actual == expected


def test_the_counter_was_warmed_up_and_keeps_its_state(url: str) -> None:
    # The warm-up file ran 3 x incr_counter and incr_counter_by(10) before it served.
    by_zero = {"signature_name": "incr_counter_by", "inputs": {"delta": 0.0}}
    assert call(url, "counter:predict", by_zero).json() == {"outputs": 13.0}
    by_two = {"signature_name": "incr_counter_by", "inputs": {"delta": 2.0}}
    assert call(url, "counter:predict", by_two).json() == {"outputs": 15.0}
    # TF Serving's REST API cannot call a signature without inputs: INVALID_ARGUMENT.
    no_inputs = call(url, "counter:predict", {"signature_name": "get_counter", "inputs": {}})
    assert no_inputs.status_code == 400
    # A batch of deltas cannot update the scalar: TensorFlow's INVALID_ARGUMENT, so 400.
    batch = call(url, "counter:predict", {**by_two, "inputs": {"delta": [1.0, 2.0]}})
    assert batch.status_code == 400
    assert "Parameters and update must be the same size" in batch.json()["error"]


def test_a_bad_warmup_file_fails_its_version_not_the_model(url: str) -> None:
    status = {s["version"]: s for s in call(url, "warm-bad").json()["model_version_status"]}
    assert status["123"]["state"] == "AVAILABLE"
    assert status["124"]["state"] == "END"
    message = status["124"]["status"]["error_message"]
    assert "warm-up file assets.extra/tf_serving_warmup_requests" in message
    assert "TFRecord format" in message
    assert call(url, "warm-bad:predict", {"instances": [2.0]}).json() == {"predictions": [3.0]}


def test_bad_half_plus_two_fails_with_the_reason_while_the_others_serve(url: str) -> None:
    response = call(url, "bad:predict", {"instances": [2.0]})
    assert response.status_code == 503
    error = response.json()["error"]
    assert "no saved_model.pb (SavedModel) or Keras file" in error and "export.meta" in error
    assert call(url, "half_plus_two:predict", {"instances": [2.0]}).status_code == 200
