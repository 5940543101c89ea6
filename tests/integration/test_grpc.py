"""gRPC on the fleet's models, driven with the real clients: TF Serving's stubs
(``tensorflow-serving-api``) and ``tritonclient.grpc``, checking the exact status codes.

These calls cross Serve's Python proxy (``serve.start`` without the fast path); the e2e test
runs the documented gRPC calls (README.md, docs/protocols.md) through HAProxy. More than one
application runs in this session, so every call names its application in the ``application``
metadata, as Serve's proxy needs; with one application (``serve run serve_config.yaml``)
clients send none (e2e).

A second application (``grpc-guarded``) has bearer auth, a version label, small limits and a
model whose batches wait 10 s to fill, for auth, labels, limits and deadlines.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tensorflow as tf
import tritonclient.grpc as triton
from google.protobuf import json_format
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.helpers import TFSERVING_TESTDATA
from tests.integration.conftest import deploy_and_wait, undeploy

pytestmark = pytest.mark.integration

Code = grpc.StatusCode
FLEET = (("application", "fleet"),)
TIMEOUT = 60
HALF_PLUS_TWO = str(TFSERVING_TESTDATA / "saved_model_half_plus_two_cpu")
TWO_VERSIONS = str(TFSERVING_TESTDATA / "saved_model_half_plus_two_2_versions")

GUARDED = "grpc-guarded"
TOKEN = "grpc-test-token-0123456789"
GUARDED_METADATA = (("application", GUARDED), ("authorization", f"Bearer {TOKEN}"))


@pytest.fixture(scope="module")
def channel(fleet: dict, grpc_port: int) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        yield channel


@pytest.fixture(scope="module")
def tfs(channel: grpc.Channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def models(channel: grpc.Channel) -> model_service_pb2_grpc.ModelServiceStub:
    return model_service_pb2_grpc.ModelServiceStub(channel)


@pytest.fixture(scope="module")
def client(fleet: dict, grpc_port: int) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    yield client
    client.close()


def failure(call, request, metadata=FLEET, timeout: float = TIMEOUT) -> grpc.RpcError:
    """The error of a call that must fail."""
    with pytest.raises(grpc.RpcError) as info:
        call(request, metadata=metadata, timeout=timeout)
    return info.value


def predict_request(model: str, signature: str = "", **inputs) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def float32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def examples(request, *xs: float):
    for x in xs:
        feature = request.input.example_list.examples.add().features.feature["x"]
        feature.float_list.value.append(x)
    return request


# --- TF Serving: PredictionService, ModelService ---------------------------------------------


def test_predict_like_tf_serving(tfs) -> None:
    response = tfs.Predict(
        predict_request("half-plus-two", x=float32(1.0, 2.0, 5.0)), metadata=FLEET, timeout=TIMEOUT
    )
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [2.5, 3.0, 4.5]
    spec = response.model_spec
    assert (spec.name, spec.version.value, spec.signature_name) == (
        "half-plus-two",
        123,
        "serving_default",
    )


def test_predict_versions(tfs) -> None:
    request = predict_request("two-versions", x=float32(2.0))
    latest = tfs.Predict(request, metadata=FLEET, timeout=TIMEOUT)
    assert latest.model_spec.version.value == 124  # the default policy serves the latest only
    request.model_spec.version.value = 124
    assert tf.make_ndarray(tfs.Predict(request, metadata=FLEET, timeout=TIMEOUT).outputs["y"]) == [
        3.0
    ]
    request.model_spec.version.value = 123
    error = failure(tfs.Predict, request)
    assert error.code() == Code.NOT_FOUND and "version 123" in error.details()


def test_predict_named_inputs_strings_and_output_filter(tfs) -> None:
    request = predict_request(
        "multi",
        x=np.array([[1, 2], [0.5, 0.5]], dtype=np.float32),
        k=np.array([2, 3], dtype=np.int64),
        who=np.array([b"ray", b"tf"], dtype=object),
    )
    outputs = tfs.Predict(request, metadata=FLEET, timeout=TIMEOUT).outputs
    assert sorted(outputs) == ["greeting", "k_twice", "total"]
    assert tf.make_ndarray(outputs["total"]).tolist() == [6.0, 3.0]
    assert tf.make_ndarray(outputs["k_twice"]).tolist() == [4, 6]
    assert tf.make_ndarray(outputs["greeting"]).tolist() == [b"hello ray", b"hello tf"]
    request.output_filter.append("greeting")
    filtered = tfs.Predict(request, metadata=FLEET, timeout=TIMEOUT).outputs
    assert list(filtered) == ["greeting"]


def test_classify_regress_and_multi_inference_like_tf_serving(tfs) -> None:
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "half-plus-two"
    classify.model_spec.signature_name = "classify_x_to_y"
    result = tfs.Classify(examples(classify, 2.0), metadata=FLEET, timeout=TIMEOUT)
    assert [(c.label, c.score) for c in result.result.classifications[0].classes] == [("", 3.0)]
    assert result.model_spec.version.value == 123

    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = "half-plus-two"
    regress.model_spec.signature_name = "regress_x_to_y"
    result = tfs.Regress(examples(regress, 2.0, 4.0), metadata=FLEET, timeout=TIMEOUT)
    assert [r.value for r in result.result.regressions] == [3.0, 4.0]

    # As TF Serving's own testMultiInference (tensorflow_model_server_test.py).
    multi = inference_pb2.MultiInferenceRequest()
    for signature, method in (("regress_x_to_y", "regress"), ("classify_x_to_y", "classify")):
        task = multi.tasks.add()
        task.model_spec.name = "half-plus-two"
        task.model_spec.signature_name = signature
        task.method_name = f"tensorflow/serving/{method}"
    results = tfs.MultiInference(examples(multi, 2.0), metadata=FLEET, timeout=TIMEOUT).results
    assert results[0].regression_result.regressions[0].value == 3.0
    assert results[1].classification_result.classifications[0].classes[0].score == 3.0
    assert [r.model_spec.signature_name for r in results] == ["regress_x_to_y", "classify_x_to_y"]


def test_metadata_is_tf_servings_golden_and_status_lists_versions(tfs, models) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "half-plus-two"
    response = tfs.GetModelMetadata(request, metadata=FLEET, timeout=TIMEOUT)
    assert (response.model_spec.name, response.model_spec.version.value) == ("half-plus-two", 123)
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_defs)
    golden = json.loads((TFSERVING_TESTDATA / "half_plus_two_model_metadata.json").read_text())
    expected = json_format.ParseDict(
        golden["metadata"]["signature_def"], get_model_metadata_pb2.SignatureDefMap()
    )
    assert signature_defs == expected

    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "two-versions"
    (entry,) = models.GetModelStatus(status, metadata=FLEET, timeout=TIMEOUT).model_version_status
    assert (entry.version, entry.state, entry.status.error_code) == (
        124,
        get_model_status_pb2.ModelVersionStatus.AVAILABLE,
        0,  # tensorflow.error.OK
    )
    status.model_spec.version.value = 123
    error = failure(models.GetModelStatus, status)
    assert error.code() == Code.NOT_FOUND and "version 123" in error.details()


def with_spec(request, name: str, signature: str = "", label: str = ""):
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if label:
        request.model_spec.version_label = label
    return request


@pytest.mark.parametrize(
    ("rpc", "build", "code", "fragment"),
    [
        (
            "Predict",
            lambda: predict_request("resnet", x=float32(1.0)),
            Code.NOT_FOUND,
            "known models",
        ),
        # predict_util.cc: an unknown signature is FAILED_PRECONDITION in Predict ...
        (
            "Predict",
            lambda: predict_request("half-plus-two", "nope", x=float32(1.0)),
            Code.FAILED_PRECONDITION,
            "no signature 'nope'",
        ),
        # ... and INVALID_ARGUMENT in Classify (classifier.cc).
        (
            "Classify",
            lambda: examples(
                with_spec(classification_pb2.ClassificationRequest(), "half-plus-two", "nope"), 2.0
            ),
            Code.INVALID_ARGUMENT,
            "no signature 'nope'",
        ),
        (
            "Predict",
            lambda: predict_request("half-plus-two", x=np.array([1], dtype=np.int64)),
            Code.INVALID_ARGUMENT,
            "input 'x' has datatype INT64, the model expects FP32",
        ),
        (
            "Predict",
            lambda: predict_request("multi", x=np.zeros((1, 3), dtype=np.float32)),
            Code.INVALID_ARGUMENT,
            "input",
        ),
        ("Predict", predict_pb2.PredictRequest, Code.INVALID_ARGUMENT, "Missing ModelSpec"),
        (
            "Predict",
            lambda: with_spec(
                predict_request("two-versions", x=float32(2.0)), "two-versions", "", "stable"
            ),
            Code.INVALID_ARGUMENT,
            "no version label 'stable'",
        ),
        (
            "Predict",
            lambda: predict_request("broken", x=float32(1.0)),
            Code.UNAVAILABLE,
            "broken",
        ),
        (
            "GetModelMetadata",
            lambda: with_spec(get_model_metadata_pb2.GetModelMetadataRequest(), "half-plus-two"),
            Code.INVALID_ARGUMENT,
            "at least one metadata_field",
        ),
        (
            "Regress",
            lambda: with_spec(
                regression_pb2.RegressionRequest(), "half-plus-two", "regress_x_to_y"
            ),
            Code.INVALID_ARGUMENT,
            "Input is empty",
        ),
    ],
    ids=[
        "unknown-model",
        "predict-unknown-signature",
        "classify-unknown-signature",
        "bad-dtype",
        "bad-shape",
        "missing-model-spec",
        "unknown-label",
        "failed-model",
        "no-metadata-field",
        "no-examples",
    ],
)
def test_tfserving_errors_have_tf_servings_codes(tfs, rpc, build, code, fragment) -> None:
    error = failure(getattr(tfs, rpc), build())
    assert error.code() == code, error.details()
    assert fragment in error.details()
    assert "Traceback" not in error.details()


def test_unserved_rpcs_are_unimplemented(models) -> None:
    error = failure(models.HandleReloadConfigRequest, model_management_pb2.ReloadConfigRequest())
    assert error.code() == Code.UNIMPLEMENTED


# --- Open Inference Protocol: tritonclient.grpc ----------------------------------------------

HEADERS = dict(FLEET)


def multi_inputs() -> list[triton.InferInput]:
    x = triton.InferInput("x", [2, 2], "FP32")
    x.set_data_from_numpy(np.array([[1, 2], [0.5, 0.5]], dtype=np.float32))
    k = triton.InferInput("k", [2], "INT64")
    k.set_data_from_numpy(np.array([2, 3], dtype=np.int64))
    who = triton.InferInput("who", [2], "BYTES")
    who.set_data_from_numpy(np.array([b"ray", b"tf"], dtype=np.object_))
    return [x, k, who]


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live(headers=HEADERS)
    # The fleet includes a model that cannot load, so the server is not ready (strict).
    assert not client.is_server_ready(headers=HEADERS)
    metadata = client.get_server_metadata(headers=HEADERS)
    assert metadata.name == "serve-app"
    assert client.is_model_ready("multi", headers=HEADERS)
    assert client.is_model_ready("two-versions", "124", headers=HEADERS)
    assert not client.is_model_ready("broken", headers=HEADERS)
    for model, version in (("no-such-model", ""), ("two-versions", "123")):
        with pytest.raises(InferenceServerException) as info:
            client.is_model_ready(model, version, headers=HEADERS)
        assert info.value.status() == "StatusCode.NOT_FOUND"
    model = client.get_model_metadata("multi", headers=HEADERS, as_json=True)
    assert (model["name"], model["versions"], model["platform"]) == (
        "multi",
        ["1"],
        "tensorflow_savedmodel",
    )
    assert sorted(model["inputs"], key=lambda t: t["name"]) == [
        {"name": "k", "datatype": "INT64", "shape": ["-1"]},
        {"name": "who", "datatype": "BYTES", "shape": ["-1"]},
        {"name": "x", "datatype": "FP32", "shape": ["-1", "2"]},
    ]


def test_infer_with_raw_tensors(client: triton.InferenceServerClient) -> None:
    result = client.infer(
        "multi", multi_inputs(), request_id="r-1", headers=HEADERS, client_timeout=TIMEOUT
    )
    assert result.as_numpy("total").tolist() == [6.0, 3.0]
    assert result.as_numpy("k_twice").tolist() == [4, 6]
    assert result.as_numpy("greeting").tolist() == [b"hello ray", b"hello tf"]
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("multi", "1", "r-1")
    only = client.infer(
        "multi",
        multi_inputs(),
        outputs=[triton.InferRequestedOutput("k_twice")],
        headers=HEADERS,
        client_timeout=TIMEOUT,
    )
    assert [o.name for o in only.get_response().outputs] == ["k_twice"]


def test_infer_with_typed_contents_and_text(channel: grpc.Channel) -> None:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = service_pb2.ModelInferRequest(model_name="minilm")
    text = request.inputs.add(name="text", datatype="BYTES", shape=[2])
    text.contents.bytes_contents.extend([b"Ray Serve runs many models", b"gRPC too"])
    response = stub.ModelInfer(request, metadata=FLEET, timeout=TIMEOUT)
    embeddings = triton.InferResult(response).as_numpy("embeddings")
    assert embeddings.shape == (2, 384) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-4)


def v2_input(name: str, shape: list[int], datatype: str, array: np.ndarray) -> triton.InferInput:
    infer_input = triton.InferInput(name, shape, datatype)
    infer_input.set_data_from_numpy(array)
    return infer_input


@pytest.mark.parametrize(
    ("model", "version", "inputs", "status", "fragment"),
    [
        ("resnet", "", lambda: multi_inputs(), "NOT_FOUND", "known models"),
        ("two-versions", "7", lambda: [v2_input("x", [1], "FP32", float32(1.0))], "NOT_FOUND", "7"),
        (
            "two-versions",
            "latest",
            lambda: [v2_input("x", [1], "FP32", float32(1.0))],
            "INVALID_ARGUMENT",
            "model_version",
        ),
        (
            "half-plus-two",
            "",
            lambda: [v2_input("x", [1], "FP64", np.array([1.0]))],
            "INVALID_ARGUMENT",
            "input 'x' has datatype FP64, the model expects FP32",
        ),
        (
            "digits",
            "",
            lambda: [v2_input("pixels", [1, 3], "FP32", np.zeros((1, 3), np.float32))],
            "INVALID_ARGUMENT",
            "expects shape",
        ),
        ("broken", "", lambda: [v2_input("x", [1], "FP32", float32(1.0))], "UNAVAILABLE", "broken"),
    ],
    ids=["unknown-model", "unknown-version", "bad-version", "bad-datatype", "bad-shape", "failed"],
)
def test_infer_errors_have_tritons_codes(client, model, version, inputs, status, fragment) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, inputs(), model_version=version, headers=HEADERS, client_timeout=60)
    assert info.value.status() == f"StatusCode.{status}", info.value.message()
    assert fragment in info.value.message()


# --- auth, labels, limits and deadlines: an application of its own ---------------------------


@pytest.fixture(scope="module")
def guarded(serve_url: str) -> Iterator[None]:
    small = {"num_cpus": 0.25}
    deploy_and_wait(
        GUARDED,
        {
            "models": [
                {
                    "name": "two",
                    "framework": "tensorflow",
                    "uri": TWO_VERSIONS,
                    "version_policy": {"all": True},
                    "labels": {"stable": 123, "canary": 124},
                    "resources": small,
                },
                {
                    # A lone request waits 10 s (the most allowed) for its batch to fill.
                    "name": "batchy",
                    "framework": "tensorflow",
                    "uri": HALF_PLUS_TWO,
                    "batching": {"max_batch_size": 64, "batch_wait_timeout_s": 10.0},
                    "resources": small,
                },
            ],
            "ingress": {
                "num_cpus": 0.25,
                "auth_tokens": [TOKEN],
                "request_timeout_s": 120,  # only the gRPC deadline can end a call early
                "max_request_bytes": 4096,
                "max_instances_per_request": 4,
            },
        },
    )
    yield
    undeploy(GUARDED)


def test_auth_refuses_a_missing_or_wrong_token_and_leaves_health_open(guarded, tfs, client) -> None:
    request = predict_request("two", x=float32(2.0))
    missing = failure(tfs.Predict, request, metadata=(("application", GUARDED),))
    assert missing.code() == Code.UNAUTHENTICATED and "bearer token" in missing.details()
    wrong = (("application", GUARDED), ("authorization", "Bearer not-the-token-0123456789"))
    error = failure(tfs.Predict, request, metadata=wrong)
    assert error.code() == Code.UNAUTHENTICATED and "invalid bearer token" in error.details()
    headers = {"application": GUARDED}
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("two", headers=headers)
    assert info.value.status() == "StatusCode.UNAUTHENTICATED"
    assert client.is_server_live(headers=headers) and client.is_server_ready(headers=headers)
    assert client.is_model_ready("two", headers={**headers, "authorization": f"Bearer {TOKEN}"})


def test_version_labels_pick_the_version(guarded, tfs) -> None:
    for label, version in (("stable", 123), ("canary", 124)):
        request = with_spec(predict_request("two", x=float32(2.0)), "two", "", label)
        response = tfs.Predict(request, metadata=GUARDED_METADATA, timeout=TIMEOUT)
        assert response.model_spec.version.value == version
        assert tf.make_ndarray(response.outputs["y"]).tolist() == [3.0]
    request = with_spec(predict_request("two", x=float32(2.0)), "two", "", "beta")
    error = failure(tfs.Predict, request, metadata=GUARDED_METADATA)
    assert error.code() == Code.INVALID_ARGUMENT and "no version label 'beta'" in error.details()


def test_limits_as_on_rest(guarded, tfs) -> None:
    too_big = predict_request("two", x=np.zeros(2000, dtype=np.float32))
    error = failure(tfs.Predict, too_big, metadata=GUARDED_METADATA)
    assert error.code() == Code.RESOURCE_EXHAUSTED and "max_request_bytes" in error.details()
    too_many = predict_request("two", x=np.zeros(5, dtype=np.float32))
    error = failure(tfs.Predict, too_many, metadata=GUARDED_METADATA)
    assert error.code() == Code.RESOURCE_EXHAUSTED
    assert "max_instances_per_request" in error.details()


def test_the_grpc_deadline_ends_the_call_with_our_answer(guarded, tfs, client) -> None:
    # The ingress answers a little before the deadline (guard.deadline_margin), so the status
    # and message are the server's, not the client's own "Deadline Exceeded".
    error = failure(
        tfs.Predict, predict_request("batchy", x=float32(1.0)), GUARDED_METADATA, timeout=5
    )
    assert error.code() == Code.DEADLINE_EXCEEDED
    assert "did not answer within the request's deadline" in error.details()
    x = v2_input("x", [1], "FP32", float32(1.0))
    with pytest.raises(InferenceServerException) as info:
        client.infer("batchy", [x], headers=dict(GUARDED_METADATA), client_timeout=5)
    assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert "did not answer within the request's deadline" in info.value.message()
