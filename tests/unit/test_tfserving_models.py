"""TF Serving's own test SavedModels, loaded in-process by the TensorFlow servable.

The expected answers are TF Serving's: tensorflow_model_server_test.py (predict, classify,
regress on the TF1 and TF2 half_plus_two), predict_impl_test.cc (the counter's sequence),
the golden metadata JSON files, and http_server.cc's mapping of error codes to HTTP.
No Ray here: the servable is the same class a replica constructs.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deployments.signature import prepare_inputs
from deployments.tensorflow import TensorFlowModel
from serve_app.config import ModelSpec
from serve_app.errors import InvalidInput, ModelLoadError
from tests.helpers import TFSERVING_TESTDATA

VERSION = "00000123"
HALF_PLUS_TWO_TF1 = (
    "saved_model_half_plus_two_cpu",
    "saved_model_half_plus_two_mlmd",  # assets.extra/mlmd_uuid
    "saved_model_half_plus_two_cpu_with_saved_model_config",  # assets.extra/saved_model_config.pb
)


@pytest.fixture(scope="module")
def executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1)


def load(executor: ThreadPoolExecutor, path: Path, name: str = "default") -> TensorFlowModel:
    spec = ModelSpec(name=name, framework="tensorflow", uri=str(path.parent))
    model = TensorFlowModel(spec, path, executor)
    model.warm_up()  # what a replica does before the version is AVAILABLE
    return model


def ask(
    model: TensorFlowModel,
    signature: str,
    inputs: dict[str | None, Any] | None = None,
    method: str = "predict",
    examples: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One request the way the replica prepares it, without the batcher."""
    chosen = model.signature(signature)
    raw = {k: np.asarray(v) for k, v in (inputs or {}).items()}
    if method != "predict":
        raw = model.example_inputs(chosen, method, examples or [])
    prepared = prepare_inputs(chosen, raw)
    outputs = model.infer(chosen.name, prepared.tensors, {})
    return {name: value.tolist() for name, value in prepared.restore(outputs).items()}


@pytest.mark.parametrize("directory", [*HALF_PLUS_TWO_TF1, "saved_model_half_plus_two_tf2_cpu"])
def test_half_plus_two_predicts_classifies_and_regresses_like_tf_serving(
    executor: ThreadPoolExecutor, directory: str
) -> None:
    model = load(executor, TFSERVING_TESTDATA / directory / VERSION)
    assert ask(model, "", {None: [2.0]}) == {"y": [3.0]}
    # testClassify / testRegress (and their Tf2 variants): x = 2.0 -> 3.0.
    examples = [{"x": 2.0}]
    assert ask(model, "classify_x_to_y", method="classify", examples=examples) == {
        "scores": [[3.0]]
    }
    assert ask(model, "regress_x_to_y", method="regress", examples=examples) == {"outputs": [[3.0]]}


def test_the_tf2_model_runs_through_tf2s_loader_and_its_fixed_batch_signatures_alone(
    executor: ThreadPoolExecutor,
) -> None:
    model = load(executor, TFSERVING_TESTDATA / "saved_model_half_plus_two_tf2_cpu" / VERSION)
    assert model._session is None and model._functions  # TF2's concrete functions
    signatures = model.signatures()
    # serving_default takes x of shape [1]: never merged with another request's rows.
    assert not signatures["serving_default"].batched
    assert signatures["classify_x_to_y"].batched
    # Its classify signature's method_name is .../predict: TF Serving checks the tensors,
    # not the method name (--enable_signature_method_name_check defaults to false).
    assert signatures["classify_x_to_y"].method_name == "tensorflow/serving/predict"
    with pytest.raises(InvalidInput, match=r"expects shape \[1\]"):
        ask(model, "", {None: [2.0, 3.0]})


def test_half_plus_three_loads_in_a_session_and_takes_examples_in_its_scalar_input(
    executor: ThreadPoolExecutor,
) -> None:
    # TF2's loader refuses this graph (ParseExample on a rank-0 placeholder); TF Serving
    # serves it (testGoodModelConfig: x = 2.0 -> 4.0).
    model = load(executor, TFSERVING_TESTDATA / "saved_model_half_plus_three" / VERSION)
    assert model._session is not None
    assert ask(model, "serving_default", {"x": [2.0]}) == {"y": [4.0]}
    regress = ask(
        model,
        "tensorflow/serving/regress",
        method="regress",
        examples=[{"x": 2.0}, {"x": 4.0}],
    )
    assert regress == {"outputs": [[4.0], [5.0]]}


def test_the_stateful_counter_answers_predict_impl_tests_sequence(
    executor: ThreadPoolExecutor,
) -> None:
    # Reference variables: TF2's loader refuses them; a session runs them.
    model = load(executor, TFSERVING_TESTDATA / "saved_model_counter" / VERSION)
    assert not any(s.batched for s in model.signatures().values())
    sequence = ["get_counter", "incr_counter", "reset_counter", "incr_counter"]
    assert [ask(model, name)["output"] for name in sequence] == [0.0, 1.0, 0.0, 1.0]
    assert ask(model, "incr_counter_by", {"delta": 3.0}) == {"output": 4.0}
    # A batch of deltas cannot update a scalar: TensorFlow's INVALID_ARGUMENT, so 400.
    with pytest.raises(InvalidInput, match="Parameters and update must be the same size") as info:
        ask(model, "incr_counter_by", {"delta": [3.0]})
    assert info.value.status_code == 400 and "[[" not in info.value.message
    assert ask(model, "get_counter") == {"output": 4.0}


def test_unbatched_rows_of_several_requests_run_one_call_each(
    executor: ThreadPoolExecutor,
) -> None:
    model = load(executor, TFSERVING_TESTDATA / "saved_model_counter" / VERSION)
    signature = model.signature("incr_counter")
    rows = [prepare_inputs(signature, {}).tensors for _ in range(3)]
    # What the batcher hands over when three requests share a model call.
    merged = {name: np.concatenate([r[name] for r in rows]) for name in rows[0]}
    assert model.infer("incr_counter", merged, {})["output"].tolist() == [1.0, 2.0, 3.0]


def test_bad_half_plus_two_fails_to_load_with_the_reason(executor: ThreadPoolExecutor) -> None:
    with pytest.raises(ModelLoadError) as info:
        load(executor, TFSERVING_TESTDATA / "bad_half_plus_two" / VERSION)
    message = str(info.value)
    assert "no saved_model.pb (SavedModel) or Keras file" in message
    assert "checkpoint, export, export.meta" in message


@pytest.mark.parametrize(
    ("directory", "golden"),
    [
        ("saved_model_half_plus_two_cpu", "half_plus_two_model_metadata.json"),
        (
            "saved_model_half_plus_two_2_versions",
            "saved_model_half_plus_two_2_versions_metadata.json",
        ),
    ],
)
def test_tf1_signature_defs_equal_tf_servings_golden_metadata(
    executor: ThreadPoolExecutor, directory: str, golden: str
) -> None:
    model = load(executor, TFSERVING_TESTDATA / directory / VERSION)
    expected = json.loads((TFSERVING_TESTDATA / golden).read_text())
    assert model.signature_defs() == expected["metadata"]["signature_def"]["signature_def"]


def test_tf2_signature_defs_match_the_tf2_golden(executor: ThreadPoolExecutor) -> None:
    """TF Serving's TF2 golden is of an export that is not in its testdata; this export of
    the same model differs from it only in serving_default's ``defaults`` (x = [0.0]). Like
    TF Serving, metadata lists __saved_model_init_op too."""
    model = load(executor, TFSERVING_TESTDATA / "saved_model_half_plus_two_tf2_cpu" / VERSION)
    golden = json.loads(
        (TFSERVING_TESTDATA / "saved_model_half_plus_two_tf2_2_versions_metadata.json").read_text()
    )
    expected = golden["metadata"]["signature_def"]["signature_def"]
    actual = model.signature_defs()
    assert actual["serving_default"].pop("defaults")["x"]["float_val"] == [0.0]
    expected["serving_default"].pop("defaults")
    # An empty map is the same proto whether printed ({}) or not (the golden leaves it out).
    assert actual["__saved_model_init_op"].pop("defaults") == {}
    assert actual == expected


def test_unknown_signature_is_invalid_argument_listing_the_signatures(
    executor: ThreadPoolExecutor,
) -> None:
    model = load(executor, TFSERVING_TESTDATA / "saved_model_half_plus_two_cpu" / VERSION)
    with pytest.raises(InvalidInput, match=r"no signature 'nope'.*classify_x_to_y") as info:
        model.signature("nope")
    assert info.value.status_code == 400  # TF Serving: INVALID_ARGUMENT, not NOT_FOUND


@pytest.mark.parametrize(
    ("signature", "method", "fragment"),
    [
        ("serving_default", "classify", "exactly one input named 'inputs'"),
        ("regress_x_to_y", "classify", "'classes' and/or 'scores'"),
        ("classify_x_to_y", "regress", "exactly one output named 'outputs'"),
    ],
)
def test_classify_and_regress_check_the_signature_as_tf_serving(
    executor: ThreadPoolExecutor, signature: str, method: str, fragment: str
) -> None:
    model = load(executor, TFSERVING_TESTDATA / "saved_model_half_plus_two_cpu" / VERSION)
    with pytest.raises(InvalidInput, match=fragment):
        ask(model, signature, method=method, examples=[{"x": 2.0}])


@pytest.mark.parametrize(
    "directory", ["saved_model_half_plus_two_cpu", "saved_model_half_plus_two_tf2_cpu"]
)
def test_examples_the_graph_cannot_parse_are_invalid_argument(
    executor: ThreadPoolExecutor, directory: str
) -> None:
    model = load(executor, TFSERVING_TESTDATA / directory / VERSION)
    # x is a float feature; an int64 feature fails ParseExample: INVALID_ARGUMENT, 400.
    with pytest.raises(InvalidInput, match="signature 'regress_x_to_y'") as info:
        ask(model, "regress_x_to_y", method="regress", examples=[{"x": 2}])
    assert info.value.status_code == 400
    message = info.value.message
    assert "Data types don't match" in message  # TensorFlow's reason, kept
    assert "Detected at node" not in message and "[[" not in message  # its internals, not


@pytest.mark.parametrize(
    ("error", "status"),
    [
        ("InvalidArgumentError", 400),
        ("FailedPreconditionError", 400),
        ("OutOfRangeError", 400),
        ("NotFoundError", 404),
        ("ResourceExhaustedError", 429),
        ("UnavailableError", 503),
        ("DeadlineExceededError", 504),
        ("UnimplementedError", 501),
        ("PermissionDeniedError", 403),
        ("AbortedError", 409),
        ("InternalError", 500),
        ("DataLossError", 500),
    ],
)
def test_tensorflow_errors_get_tf_servings_http_status(error: str, status: int) -> None:
    """http_server.cc's ToHTTPStatusCode, for TensorFlow's own exception classes."""
    import pickle

    import tensorflow as tf

    from deployments.tf_errors import serving_error

    exc = getattr(tf.errors, error)(None, None, "it went wrong\n\t [[{{node some/op}}]]")
    mapped = serving_error("m", "sig", exc)
    assert mapped.status_code == status
    assert mapped.message == "model 'm' signature 'sig': it went wrong"
    # Errors cross from the model replica to the ingress: they must survive pickling.
    assert pickle.loads(pickle.dumps(mapped)).status_code == status


def test_a_signature_without_batches_takes_each_request_as_one_row() -> None:
    from deployments.signature import Signature, TensorSpec

    f32 = np.dtype("float32")
    delta, out = TensorSpec("delta", f32, ()), TensorSpec("out", f32, ())
    signature = Signature("incr", {"delta": delta}, {"out": out}, batched=False)
    prepared = prepare_inputs(signature, {"delta": np.array(3)})
    assert prepared.unbatched and prepared.rows == 1
    assert prepared.tensors["delta"].shape == (1,) and prepared.tensors["delta"].dtype == f32
    assert prepared.restore({"out": np.array([4.0])})["out"].shape == ()
    with pytest.raises(InvalidInput, match=r"expects shape \[\].*no batch of rows"):
        prepare_inputs(signature, {"delta": np.array([3.0])})
