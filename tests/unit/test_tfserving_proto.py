"""TF Serving gRPC codec against TF Serving's own messages and TensorFlow's tensor conversion.

Requests are built with ``tensorflow_serving.apis`` and ``tf.make_tensor_proto`` as a TF
Serving client builds them, sent through their bytes, and decoded by the codec, which has
no TensorFlow; its responses are parsed back with TF Serving's classes and ``tf.make_ndarray``.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework.tensor_pb2 import TensorProto
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    predict_pb2,
    regression_pb2,
)

from serve_app.errors import InvalidInput, NotFound, PayloadTooLarge, Unimplemented
from serve_app.protocols import tfserving_proto as codec
from serve_app.request import CLASSIFY, REGRESS

LIMIT = 1 << 20


def decode(tensor: TensorProto, max_bytes: int = LIMIT) -> np.ndarray:
    """A real TensorProto through its bytes into the codec's private message class."""
    ours = codec.TensorProto.FromString(tensor.SerializeToString())
    return codec.decode_tensor(ours, "x", max_bytes)


def test_the_codec_imports_no_tensorflow() -> None:
    code = (
        "import sys, serve_app.protocols.tfserving_proto, serve_app.protocols.v2_proto;"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported';"
        "assert 'tritonclient' not in sys.modules, 'tritonclient imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "array",
    [
        np.array([[1.5, -2.0], [3.25, 4.0]], dtype=np.float32),
        np.array([1.0, 2.5], dtype=np.float64),
        np.array([0.5, -1.0, 65504.0], dtype=np.float16),
        np.array([-128, 0, 127], dtype=np.int8),
        np.array([0, 255], dtype=np.uint8),
        np.array([-(2**15), 2**15 - 1], dtype=np.int16),
        np.array([0, 2**16 - 1], dtype=np.uint16),
        np.array([[7], [-7]], dtype=np.int32),
        np.array([2**62, -(2**62)], dtype=np.int64),
        np.array([2**32 - 1], dtype=np.uint32),
        np.array([2**64 - 1], dtype=np.uint64),
        np.array([True, False, True]),
        np.array(3.5, dtype=np.float32),  # a scalar
        np.zeros((2, 0), dtype=np.float32),  # no values at all
    ],
    ids=lambda a: f"{a.dtype}{list(a.shape)}",
)
def test_tensors_from_tensorflow_decode_to_the_same_array(array: np.ndarray) -> None:
    # make_tensor_proto writes tensor_content; as_proto fields are exercised below.
    decoded = decode(tf.make_tensor_proto(array))
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


def test_strings_decode_to_an_object_array_of_bytes() -> None:
    decoded = decode(tf.make_tensor_proto([["a", "b"], ["c", "\u00e9"]]))
    assert decoded.dtype == object and decoded.shape == (2, 2)
    assert decoded.tolist() == [[b"a", b"b"], [b"c", "\u00e9".encode()]]


def test_typed_values_are_read_and_padded_with_the_last_one_as_tensorflow_does() -> None:
    proto = tf.make_tensor_proto([1.0, 2.0], dtype=tf.float32, shape=[4])
    assert not proto.tensor_content and list(proto.float_val) == [1.0, 2.0]
    np.testing.assert_array_equal(decode(proto), [1.0, 2.0, 2.0, 2.0])
    np.testing.assert_array_equal(decode(proto), tf.make_ndarray(proto))
    empty = TensorProto(dtype=tf.int32.as_datatype_enum)
    empty.tensor_shape.dim.add(size=3)
    np.testing.assert_array_equal(decode(empty), [0, 0, 0])
    halves = TensorProto(dtype=tf.float16.as_datatype_enum)
    halves.tensor_shape.dim.add(size=2)
    halves.half_val.extend(np.array([1.5, -2.0], dtype=np.float16).view(np.uint16).tolist())
    np.testing.assert_array_equal(decode(halves), np.array([1.5, -2.0], dtype=np.float16))


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (
            lambda: TensorProto(dtype=1, tensor_shape={"dim": [{"size": 2}]}, float_val=[1, 2, 3]),
            "3 values in float_val",
        ),
        (lambda: tf.make_tensor_proto(np.zeros(2, np.complex64)), "DT_COMPLEX64"),
        (lambda: TensorProto(dtype=1, tensor_shape={"unknown_rank": True}), "rank"),
        (lambda: TensorProto(dtype=1, tensor_shape={"dim": [{"size": -1}]}), "negat"),
        (
            lambda: TensorProto(
                dtype=1, tensor_shape={"dim": [{"size": 0}, {"size": 2**62}, {"size": 2**62}]}
            ),
            "cannot be made",
        ),
        (
            lambda: TensorProto(
                dtype=1, tensor_shape={"dim": [{"size": 3}]}, tensor_content=b"\0" * 8
            ),
            "tensor_content has 8 bytes",
        ),
        (
            lambda: TensorProto(
                dtype=tf.int8.as_datatype_enum, tensor_shape={"dim": [{"size": 1}]}, int_val=[300]
            ),
            "value 300, out of range for DT_INT8",
        ),
    ],
    ids=[
        "too-many-values",
        "dtype",
        "unknown-rank",
        "negative-dim",
        "unmakeable-shape",
        "content-size",
        "range",
    ],
)
def test_bad_tensors_are_refused_naming_the_input(build, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment) as info:
        decode(build())
    assert "input 'x'" in info.value.message


def test_a_shape_larger_than_the_limit_is_refused_before_it_is_filled() -> None:
    proto = TensorProto(dtype=1, tensor_shape={"dim": [{"size": 10**9}]}, float_val=[1.0])
    with pytest.raises(PayloadTooLarge, match="max_request_bytes"):
        decode(proto)
    # One short string padded to many: each decoded element costs a pointer (8 bytes).
    strings = TensorProto(dtype=7, tensor_shape={"dim": [{"size": 10**7}]}, string_val=[b"a"])
    with pytest.raises(PayloadTooLarge, match="80000000 bytes"):
        decode(strings)


@pytest.mark.parametrize(
    "array",
    [
        np.array([[0.25, -1.0]], dtype=np.float32),
        np.array([1, 2], dtype=np.int64),
        np.array([3, 4], dtype=np.uint8),
        np.array([0.5], dtype=np.float16),
        np.array([True]),
        np.array([b"x", b"\xff"], dtype=object),
        np.array(["t\u00e9"], dtype=object),
        np.array(2.0, dtype=np.float64),
    ],
    ids=lambda a: f"{a.dtype}{list(a.shape)}",
)
def test_outputs_encode_in_typed_fields_that_tensorflow_reads_back(array: np.ndarray) -> None:
    ours = codec.TensorProto()
    codec.encode_tensor(array, ours, "y")
    real = TensorProto.FromString(ours.SerializeToString())
    assert not real.tensor_content  # AsProtoField, as TF Serving's Predict answers
    back = tf.make_ndarray(real)
    if array.dtype == object:
        assert back.tolist() == [v if isinstance(v, bytes) else v.encode() for v in array.tolist()]
    else:
        assert back.dtype == array.dtype
        np.testing.assert_array_equal(back, array)


# --- Predict ---------------------------------------------------------------------------------


def test_predict_request_names_model_version_signature_and_outputs() -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half"
    request.model_spec.version.value = 123
    request.model_spec.signature_name = "regress_x_to_y"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0, 2.0], dtype=tf.float32))
    request.output_filter.append("y")
    target, decoded = codec.decode_predict(request.SerializeToString(), LIMIT)
    assert target == codec.Target("half", 123, None, "regress_x_to_y")
    assert (decoded.version, decoded.label, decoded.signature_name) == (123, None, "regress_x_to_y")
    assert decoded.outputs == ["y"] and decoded.exact_dtypes
    np.testing.assert_array_equal(decoded.inputs["x"], np.array([1.0, 2.0], dtype=np.float32))

    labelled = predict_pb2.PredictRequest()
    labelled.model_spec.name = "half"
    labelled.model_spec.version_label = "stable"
    target, decoded = codec.decode_predict(labelled.SerializeToString(), LIMIT)
    assert (target.version, target.label, decoded.label, decoded.outputs) == (
        None,
        "stable",
        "stable",
        None,
    )


def test_predict_errors_as_tf_serving_words_them() -> None:
    with pytest.raises(InvalidInput, match=r"^Missing ModelSpec$"):
        codec.decode_predict(predict_pb2.PredictRequest().SerializeToString(), LIMIT)
    duplicate = predict_pb2.PredictRequest(output_filter=["y", "y"])
    duplicate.model_spec.name = "half"
    with pytest.raises(InvalidInput, match="duplicate output tensor alias: y"):
        codec.decode_predict(duplicate.SerializeToString(), LIMIT)
    with pytest.raises(InvalidInput, match=r"not a valid tensorflow\.serving\.PredictRequest"):
        codec.decode_predict(b"\xff\xff\xff", LIMIT)


def test_predict_response_reads_back_with_tf_serving_classes() -> None:
    target = codec.Target("half", None, None, "")
    outputs = {"y": np.array([2.5, 3.0], dtype=np.float32)}
    response = predict_pb2.PredictResponse.FromString(
        codec.encode_predict(target, 123, outputs).SerializeToString()
    )
    assert response.model_spec.name == "half"
    assert response.model_spec.signature_name == "serving_default"
    assert response.model_spec.version.value == 123
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["y"]), [2.5, 3.0])


# --- Classify, Regress, MultiInference -------------------------------------------------------


def example(**features) -> tf.train.Example:
    feature = {}
    for name, value in features.items():
        if isinstance(value[0], bytes):
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=value))
        elif isinstance(value[0], int):
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=value))
        else:
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=value))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def test_examples_with_context_become_feature_lists_each_example_winning() -> None:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "half"
    request.model_spec.signature_name = "classify_x_to_y"
    with_context = request.input.example_list_with_context
    with_context.context.CopyFrom(example(x=[9.0], tag=[b"ctx"], n=[1, 2]))
    with_context.examples.extend([example(x=[2.0]), example(tag=[b"own"])])
    target, decoded = codec.decode_examples(request.SerializeToString(), CLASSIFY)
    assert target.signature_name == decoded.signature_name == "classify_x_to_y"
    assert decoded.method == CLASSIFY and decoded.inputs == {}
    assert decoded.examples == [
        {"x": [2.0], "tag": [b"ctx"], "n": [1, 2]},
        {"x": [9.0], "tag": [b"own"], "n": [1, 2]},
    ]
    plain = regression_pb2.RegressionRequest()
    plain.model_spec.name = "half"
    plain.input.example_list.examples.append(example(x=[1.0]))
    _, decoded = codec.decode_examples(plain.SerializeToString(), REGRESS)
    assert decoded.method == REGRESS and decoded.examples == [{"x": [1.0]}]


def test_classify_and_regress_responses_read_back() -> None:
    target = codec.Target("half", None, None, "classify_x_to_y")
    outputs = {
        "classes": np.array([[b"a", b"b"]], dtype=object),
        "scores": np.array([[0.25, 0.75]], dtype=np.float32),
    }
    response = classification_pb2.ClassificationResponse.FromString(
        codec.encode_examples(target, 7, CLASSIFY, outputs).SerializeToString()
    )
    assert response.model_spec.version.value == 7
    assert [(c.label, c.score) for c in response.result.classifications[0].classes] == [
        ("a", 0.25),
        ("b", 0.75),
    ]
    response = regression_pb2.RegressionResponse.FromString(
        codec.encode_examples(
            target, 7, REGRESS, {"outputs": np.array([[3.0], [4.0]], dtype=np.float32)}
        ).SerializeToString()
    )
    assert [r.value for r in response.result.regressions] == [3.0, 4.0]


def multi(*tasks: tuple[str, str, str]) -> bytes:
    request = inference_pb2.MultiInferenceRequest()
    for name, signature, method in tasks:
        task = request.tasks.add()
        task.model_spec.name = name
        task.model_spec.signature_name = signature
        task.method_name = method
    request.input.example_list.examples.append(example(x=[2.0]))
    return request.SerializeToString()


CLASSIFY_METHOD, REGRESS_METHOD = "tensorflow/serving/classify", "tensorflow/serving/regress"


def test_multi_inference_runs_each_task_on_the_same_examples() -> None:
    decoded = codec.decode_multi_inference(
        multi(("half", "classify_x_to_y", CLASSIFY_METHOD), ("half", "", REGRESS_METHOD))
    )
    assert decoded.target.name == "half"
    (sig_a, req_a), (sig_b, req_b) = decoded.tasks
    assert (sig_a, req_a.method, req_a.signature_name) == ("classify_x_to_y", CLASSIFY, sig_a)
    assert (sig_b, req_b.method, req_b.signature_name) == ("", REGRESS, "serving_default")
    assert req_a.examples == req_b.examples == [{"x": [2.0]}]
    response = inference_pb2.MultiInferenceResponse.FromString(
        codec.encode_multi_inference(
            decoded,
            [
                (1, {"scores": np.array([[0.5]], dtype=np.float32)}),
                (1, {"outputs": np.array([3.0], dtype=np.float32)}),
            ],
        ).SerializeToString()
    )
    first, second = response.results
    assert first.model_spec.signature_name == "classify_x_to_y"
    assert first.classification_result.classifications[0].classes[0].score == 0.5
    assert second.model_spec.signature_name == "serving_default"
    assert second.regression_result.regressions[0].value == 3.0


@pytest.mark.parametrize(
    ("tasks", "error", "fragment"),
    [
        ((), NotFound, "no tasks"),
        ((("", "a", CLASSIFY_METHOD),), InvalidInput, "empty model name"),
        ((("m", "a", CLASSIFY_METHOD), ("n", "b", REGRESS_METHOD)), InvalidInput, "same model"),
        (
            (("m", "", CLASSIFY_METHOD), ("m", "serving_default", REGRESS_METHOD)),
            InvalidInput,
            "Dup",
        ),
        ((("m", "a", "tensorflow/serving/predict"),), Unimplemented, "Unsupported signature"),
    ],
    ids=["no-tasks", "empty-name", "two-models", "duplicate-signature", "predict-task"],
)
def test_multi_inference_checks_as_tf_serving(tasks, error, fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        codec.decode_multi_inference(multi(*tasks))


# --- GetModelMetadata, GetModelStatus --------------------------------------------------------


def test_metadata_request_checks_and_response_packs_the_signature_defs() -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    with pytest.raises(InvalidInput, match=r"^Missing ModelSpec$"):
        codec.decode_metadata_request(request.SerializeToString())
    request.model_spec.name = "half"
    with pytest.raises(InvalidInput, match="at least one metadata_field"):
        codec.decode_metadata_request(request.SerializeToString())
    request.metadata_field.append("graph_def")
    with pytest.raises(InvalidInput, match="Metadata field graph_def is not supported"):
        codec.decode_metadata_request(request.SerializeToString())
    del request.metadata_field[:]
    request.metadata_field.append("signature_def")
    assert codec.decode_metadata_request(request.SerializeToString()).name == "half"

    tensor = {
        "dtype": "DT_FLOAT",
        "tensor_shape": {"dim": [{"size": "-1", "name": ""}], "unknown_rank": False},
        "name": "x:0",
    }
    document = {
        "model_spec": {"name": "half", "signature_name": "", "version": "123"},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    "serving_default": {
                        "inputs": {"x": tensor},
                        "outputs": {"y": {**tensor, "name": "y:0"}},
                        "method_name": "tensorflow/serving/predict",
                        "defaults": {},
                    }
                }
            }
        },
    }
    response = get_model_metadata_pb2.GetModelMetadataResponse.FromString(
        codec.encode_metadata("half", document).SerializeToString()
    )
    assert response.model_spec.name == "half" and response.model_spec.version.value == 123
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_defs)
    signature = signature_defs.signature_def["serving_default"]
    assert signature.inputs["x"].name == "x:0" and signature.inputs["x"].dtype == tf.float32
    assert signature.method_name == "tensorflow/serving/predict"


def test_status_response_reads_back_with_states_and_error_codes() -> None:
    statuses = [
        {"version": "1", "state": "END", "status": {"error_code": "UNKNOWN", "error_message": "x"}},
        {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
    ]
    response = get_model_status_pb2.GetModelStatusResponse.FromString(
        codec.encode_status(statuses).SerializeToString()
    )
    first, second = response.model_version_status
    assert (first.version, first.state, first.status.error_code, first.status.error_message) == (
        1,
        get_model_status_pb2.ModelVersionStatus.END,
        2,  # tensorflow.error.UNKNOWN
        "x",
    )
    assert (second.version, second.state) == (2, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "half"
    request.model_spec.version.value = 2
    assert codec.decode_status_request(request.SerializeToString()) == codec.Target("half", 2)
