"""The framework registry, each framework's own config block, and the Python model contract
(run in-process on the user classes of ``tests/user_models``; Ray-served in integration)."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from deployments.python_model import PythonModel
from deployments.registry import FRAMEWORKS, framework_names, servable_class
from deployments.servable import Servable
from serve_app.config import ConfigError, ModelSpec, parse_app_config
from serve_app.errors import InvalidInput, ModelLoadError, ServingError
from serve_app.request import EMBED, GENERATE, PREDICT, STREAM, PredictRequest
from tests.user_models.scorer import write_version

SCORER = "tests.user_models.scorer:Scorer"


def model(**overrides):
    return {"name": "m", "framework": "python", "uri": "repo/m", **overrides}


# --- the registry --------------------------------------------------------------------------


def test_every_registered_framework_is_a_servable_imported_without_its_framework() -> None:
    assert framework_names() == ["tensorflow", "transformers", "onnx", "python"]
    heavy = ("tensorflow", "torch", "onnxruntime")
    for name in FRAMEWORKS:
        assert issubclass(servable_class(name), Servable)
    # Reading a config imports no framework (the ingress and `serve-app check` stay light).
    loaded = [m for m in heavy if m in sys.modules]
    if not loaded:  # another test in this process may have imported one already
        parse_app_config({"models": [model(python={"class": SCORER})]})
        assert not [m for m in heavy if m in sys.modules]


@pytest.mark.parametrize(
    ("framework", "task", "capabilities"),
    [
        ("tensorflow", None, {PREDICT, "classify", "regress"}),
        ("transformers", "text-generation", {PREDICT, GENERATE, STREAM}),
        ("transformers", "feature-extraction", {PREDICT, EMBED}),
        ("transformers", "text-classification", {PREDICT}),
        ("onnx", "feature-extraction", {PREDICT, EMBED}),
        ("onnx", None, {PREDICT}),
        ("python", None, {PREDICT}),
    ],
)
def test_a_framework_declares_what_a_model_can_do(
    framework: str, task: str | None, capabilities: set[str]
) -> None:
    args = {"name": "m", "framework": framework, "uri": "repo/m", "task": task}
    if framework == "python":
        args["python"] = {"class": SCORER}
    spec = parse_app_config({"models": [args]}).models[0]
    assert spec.capabilities == frozenset(capabilities)


# --- each framework's options ------------------------------------------------------------


def test_a_python_model_names_its_class_and_options_under_python() -> None:
    spec = parse_app_config(
        {"models": [model(python={"class": SCORER, "options": {"bias": 2}})]}
    ).models[0]
    assert spec.options == {"class": SCORER, "options": {"bias": 2}}
    # The block travels to the replica with the load settings, under the framework's name.
    assert spec.load_settings()["python"] == {"class": SCORER, "options": {"bias": 2}}
    assert ModelSpec.model_validate(spec.load_settings()).options == spec.options


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({}, "python.class: Field required"),
        ({"python": {"class": "my_pkg.scorer"}}, "python.class: String should match pattern"),
        ({"python": {"class": "../x:Y"}}, "python.class: String should match pattern"),
        (
            {"python": {"class": SCORER, "klass": "x"}},
            "python.klass: unknown key 'klass' (allowed: class, options)",
        ),
        ({"python": "my_pkg:Scorer"}, "python: must be a mapping of python options"),
        (
            {"python": {"class": SCORER}, "onnx": {"file": "a.onnx"}},
            "onnx: options of framework 'onnx' do not apply to a python model",
        ),
        (
            {"python": {"class": SCORER}, "task": "feature-extraction"},
            "framework 'python' takes none",
        ),
        ({"python": {"class": SCORER}, "dtype": "float16"}, "dtype applies only to transformers"),
        ({"options": {}}, "unknown key 'options'"),
        ({"framework": "caffe"}, "framework must be one of tensorflow, transformers, onnx, python"),
        ({"framework": "tensorflow", "tensorflow": {}}, "framework 'tensorflow' takes no options"),
        ({"framework": "onnx", "onnx": {"file": "../x.onnx"}}, "onnx.file: String should match"),
        ({"framework": "onnx", "onnx": {"intra_op_threads": 0}}, "onnx.intra_op_threads"),
        ({"framework": "onnx", "task": "text-generation"}, "task must be one of"),
    ],
)
def test_framework_blocks_are_validated_strictly_with_located_errors(
    overrides: dict, fragment: str
) -> None:
    with pytest.raises(ConfigError) as error:
        parse_app_config({"models": [model(**overrides)]})
    message = str(error.value)
    assert "model 'm' (models[0])" in message
    assert fragment in message


def test_a_pool_of_python_models_hands_the_block_to_each_member() -> None:
    pool = {
        "name": "p",
        "framework": "python",
        "python": {"class": SCORER},
        "uri": "repo/pool",
        "max_models_per_replica": 2,
    }
    spec = parse_app_config({"pools": [pool]}).pools[0]
    member = spec.member_spec("tenant-1")
    assert member.options == {"class": SCORER, "options": {}}
    assert member.uri == "repo/pool/tenant-1"


# --- the Python model contract, in-process -----------------------------------------------


@pytest.fixture
def executor():
    with ThreadPoolExecutor(1) as pool:
        yield pool


def load_scorer(tmp_path: Path, executor: ThreadPoolExecutor, class_: str = SCORER, **opts):
    write_version(tmp_path, 1, 2.0)
    spec = parse_app_config(
        {"models": [model(uri=str(tmp_path), python={"class": class_, "options": opts})]}
    ).models[0]
    return PythonModel(spec, tmp_path / "1", executor)


def test_preprocess_rows_are_stacked_into_a_batch_of_the_declared_dtypes(tmp_path, executor):
    scorer = load_scorer(tmp_path, executor, bias=1.0)
    request = PredictRequest(inputs={}, instances=[{"x": [1, 2, 3, 4]}, [0, 0, 0, 1]])
    assert scorer.preprocesses(request)
    batch = scorer.preprocess(request)
    assert batch["x"].dtype == np.float32 and batch["x"].shape == (2, 4)
    outputs = scorer.infer("serving_default", batch, {})
    assert outputs["y"].tolist() == [[3, 5, 7, 9], [1, 1, 1, 3]]
    json_rows = PredictRequest(inputs={}, instances=[[1, 1, 1, 1]], json_rows=True)
    assert scorer.postprocesses(json_rows)
    assert scorer.postprocess({"y": outputs["y"][:1]}) == [b'{"y":[3.0,5.0,7.0,9.0],"total":24.0}']


def test_a_tensor_request_reaches_preprocess_one_row_at_a_time(tmp_path, executor):
    scorer = load_scorer(tmp_path, executor)
    request = PredictRequest(inputs={"x": np.ones((3, 4), np.float32)})
    assert scorer.preprocesses(request) and not scorer.postprocesses(request)
    assert scorer.preprocess(request)["x"].shape == (3, 4)


def test_a_value_error_in_preprocess_is_the_requests_own_400(tmp_path, executor):
    scorer = load_scorer(tmp_path, executor)
    request = PredictRequest(inputs={}, instances=[[1, 2, 3, 4], [1, 2]])
    with pytest.raises(InvalidInput, match="model 'm' refused instance 1: x must be 4 numbers"):
        scorer.preprocess(request)


def test_predict_must_answer_every_declared_output_with_a_row_per_input(tmp_path, executor):
    scorer = load_scorer(tmp_path, executor)
    scorer._user.predict = lambda inputs: {"y": np.zeros((1, 4))}
    with pytest.raises(ServingError, match="output 'y' has shape \\[1, 4\\], expected 2 rows"):
        scorer.infer("serving_default", {"x": np.zeros((2, 4), np.float32)}, {})
    scorer._user.predict = lambda inputs: {"z": inputs["x"]}
    with pytest.raises(ServingError, match="predict returned no output 'y'"):
        scorer.infer("serving_default", {"x": np.zeros((2, 4), np.float32)}, {})


@pytest.mark.parametrize(
    ("class_", "fragment"),
    [
        ("tests.user_models.no_such_module:Scorer", "cannot import python.class"),
        ("tests.user_models.scorer:NoSuchClass", "has no class 'NoSuchClass'"),
        ("tests.user_models.scorer:write_version", "has no class 'write_version'"),
        ("tests.user_models.scorer:FailsInInit", "FileNotFoundError: weights.bin is missing"),
    ],
)
def test_import_and_init_failures_are_load_errors(tmp_path, executor, class_, fragment):
    with pytest.raises(ModelLoadError, match=fragment.replace(".", "\\.")):
        load_scorer(tmp_path, executor, class_)


@pytest.mark.parametrize(
    ("declared", "fragment"),
    [
        ({}, "must be a non-empty dict"),
        ({"x": "float32"}, "must be (dtype, shape)"),
        ({"x": ("complex64", [-1])}, "has dtype 'complex64'"),
        ({"x": ("float32", [4])}, "the batch dimension first as -1"),
        ({"x": ("float32", [-1, 0])}, "has shape"),
    ],
)
def test_a_bad_declared_signature_is_a_load_error(tmp_path, executor, declared, fragment):
    from deployments.python_model import declared_tensors

    class Declares:
        inputs = declared

    with pytest.raises(ModelLoadError, match=fragment.replace("(", "\\(").replace(")", "\\)")):
        declared_tensors("m", Declares(), "inputs")
