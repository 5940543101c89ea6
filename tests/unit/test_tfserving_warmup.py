"""TF Serving warm-up files (assets.extra/tf_serving_warmup_requests), replayed at load.

Records are written the way TF Serving's docs and saved_model_warmup_test_util.cc write them:
TFRecords of tensorflow.serving.PredictionLog. The stateful counter shows that each record
really runs, and how many times.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    predict_pb2,
    prediction_log_pb2,
    regression_pb2,
)

from deployments.tensorflow import TensorFlowModel
from deployments.tf_warmup import MAX_RECORDS, replay_warmup, warmup_file
from serve_app.config import ModelSpec
from serve_app.errors import ModelLoadError
from tests.helpers import TFSERVING_TESTDATA

VERSION = "00000123"


@pytest.fixture(scope="module")
def executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1)


def writable_copy(model: str, root: Path) -> Path:
    """A copy of a TF Serving test model's version directory that the test may add to."""
    target = root / model / VERSION
    shutil.copytree(TFSERVING_TESTDATA / model / VERSION, target, copy_function=shutil.copyfile)
    for folder, _, _ in os.walk(target):
        os.chmod(folder, 0o755)  # the shared test data is read-only, copystat kept that
    return target


def write_warmup(version_dir: Path, records: list[bytes]) -> None:
    path = warmup_file(version_dir)
    path.parent.mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


def predict_log(signature: str, **inputs: Any) -> bytes:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ignored"  # TF Serving ignores the record's model name
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    log = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    )
    return log.SerializeToString()


def example_input(target: Any, x: float) -> None:
    example = target.example_list.examples.add()
    example.features.feature["x"].float_list.value.append(x)


def load(executor: ThreadPoolExecutor, version_dir: Path) -> TensorFlowModel:
    spec = ModelSpec(name="warm", framework="tensorflow", uri=str(version_dir.parent))
    model = TensorFlowModel(spec, version_dir, executor)
    model.warm_up()
    return model


def counter_value(model: TensorFlowModel) -> float:
    return float(model._session.run("get_counter", {})["output"])


def test_predict_records_run_before_the_model_serves(
    executor: ThreadPoolExecutor, tmp_path: Path
) -> None:
    version_dir = writable_copy("saved_model_counter", tmp_path)
    write_warmup(
        version_dir,
        [predict_log("incr_counter")] * 3 + [predict_log("incr_counter_by", delta=10.0)],
    )
    model = load(executor, version_dir)
    assert counter_value(model) == 13.0


def test_each_record_runs_num_request_iterations_times(
    executor: ThreadPoolExecutor, tmp_path: Path
) -> None:
    version_dir = writable_copy("saved_model_counter", tmp_path)
    write_warmup(version_dir, [predict_log("incr_counter")] * 2)
    model = load(executor, version_dir)  # TF Serving's default: 1 iteration
    assert counter_value(model) == 2.0
    assert replay_warmup(model, version_dir, iterations=5) == 2
    assert counter_value(model) == 12.0


def test_predict_classify_regress_and_multi_inference_records(
    executor: ThreadPoolExecutor, tmp_path: Path
) -> None:
    version_dir = writable_copy("saved_model_half_plus_two_cpu", tmp_path)
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.signature_name = "classify_x_to_y"
    example_input(classify.input, 2.0)
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.signature_name = "regress_x_to_y"
    # An example list with a context: the context's features join every example.
    regress.input.example_list_with_context.context.features.feature["x"].float_list.value.append(
        1.0
    )
    regress.input.example_list_with_context.examples.add()
    multi = inference_pb2.MultiInferenceRequest()
    for signature, method in (("regress_x_to_y", "regress"), ("classify_x_to_y", "classify")):
        task = multi.tasks.add()
        task.model_spec.signature_name = signature
        task.method_name = f"tensorflow/serving/{method}"
    example_input(multi.input, 2.0)
    records = [
        predict_log("serving_default", x=[[2.0]]),
        prediction_log_pb2.PredictionLog(
            classify_log=prediction_log_pb2.ClassifyLog(request=classify)
        ).SerializeToString(),
        prediction_log_pb2.PredictionLog(
            regress_log=prediction_log_pb2.RegressLog(request=regress)
        ).SerializeToString(),
        prediction_log_pb2.PredictionLog(
            multi_inference_log=prediction_log_pb2.MultiInferenceLog(request=multi)
        ).SerializeToString(),
    ]
    write_warmup(version_dir, records)
    model = load(executor, version_dir)
    assert replay_warmup(model, version_dir) == 4


def session_run_log() -> bytes:
    return prediction_log_pb2.PredictionLog(
        session_run_log=prediction_log_pb2.SessionRunLog()
    ).SerializeToString()


def bad_classify_log() -> bytes:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.signature_name = "serving_default"  # input x, not 'inputs'
    example_input(request.input, 2.0)
    log = prediction_log_pb2.PredictionLog(
        classify_log=prediction_log_pb2.ClassifyLog(request=request)
    )
    return log.SerializeToString()


@pytest.mark.parametrize(
    ("records", "fragment"),
    [
        ([predict_log("nope", x=[[1.0]])], "record 1: model 'warm' has no signature 'nope'"),
        ([predict_log("serving_default", x=[[1.0]]), b"\xff\xff"], "record 2: the record is not"),
        ([predict_log("serving_default", x=[[1]])], "datatype INT32, the model expects FP32"),
        ([bad_classify_log()], "exactly one input named 'inputs'"),
        ([session_run_log()], "unsupported log_type for warm-up: session_run_log"),
        ([predict_log("serving_default", x=[[1.0]])] * (MAX_RECORDS + 1), "more than 1000"),
    ],
)
def test_a_bad_warmup_file_fails_the_load_with_the_reason(
    executor: ThreadPoolExecutor, tmp_path: Path, records: list[bytes], fragment: str
) -> None:
    version_dir = writable_copy("saved_model_half_plus_two_cpu", tmp_path)
    write_warmup(version_dir, records)
    with pytest.raises(
        ModelLoadError, match=r"warm-up file assets\.extra/tf_serving_warmup_requests"
    ) as info:
        load(executor, version_dir)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda good: b"x=2\n", "truncated record at 0"),  # shorter than a record header
        (lambda good: b"predict x=2, then x=3\n" * 4, "corrupted record at 0"),
        (lambda good: good[:-6], "truncated record at 0"),
        (lambda good: good[:-5] + bytes([good[-5] ^ 1]) + good[-4:], "corrupted record at 0"),
        (lambda good: good + b"\1\2", "truncated record at "),  # a second record, cut
    ],
)
def test_a_file_that_is_not_tfrecords_fails_the_load(
    executor: ThreadPoolExecutor, tmp_path: Path, damage: Any, reason: str
) -> None:
    version_dir = writable_copy("saved_model_half_plus_two_cpu", tmp_path)
    write_warmup(version_dir, [predict_log("serving_default", x=[[1.0]])])
    good = warmup_file(version_dir).read_bytes()
    warmup_file(version_dir).write_bytes(damage(good))
    with pytest.raises(
        ModelLoadError, match="verify your warmup data is in TFRecord format"
    ) as info:
        load(executor, version_dir)
    assert reason in str(info.value)


def test_the_reader_reads_what_tensorflows_writer_writes(tmp_path: Path) -> None:
    from deployments.tf_warmup import _records

    path = tmp_path / "records"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for payload in (b"", b"one", b"two" * 1000):
            writer.write(payload)
    assert list(_records(path)) == [b"", b"one", b"two" * 1000]
