"""Input checks against a signature, and the pure batching helpers."""

import numpy as np
import pytest

from deployments.batching import (
    BatchItem,
    BatchStats,
    concat_inputs,
    group_compatible,
    split_outputs,
)
from deployments.signature import Signature, TensorSpec, prepare_inputs, squeeze_outputs
from serve_app.errors import InvalidInput

F32 = np.dtype("float32")
TEXT = np.dtype(object)


def signature(**inputs: TensorSpec) -> Signature:
    return Signature("serving_default", inputs, {"y": TensorSpec("y", F32, (-1, 1))})


def test_unnamed_input_maps_to_the_single_required_input_and_is_cast() -> None:
    sig = signature(x=TensorSpec("x", F32, (-1, 2)))
    prepared = prepare_inputs(sig, {None: np.array([[1, 2], [3, 4]])})
    assert prepared.rows == 2 and not prepared.expanded
    assert prepared.tensors["x"].dtype == F32


def test_rank_one_below_is_expanded_and_outputs_squeezed() -> None:
    sig = signature(x=TensorSpec("x", F32, (-1, 1)))
    prepared = prepare_inputs(sig, {None: np.array([2.0, 3.0])})
    assert prepared.expanded and prepared.tensors["x"].shape == (2, 1)
    squeezed = squeeze_outputs({"y": np.array([[3.0], [3.5]])})
    assert squeezed["y"].tolist() == [3.0, 3.5]


def test_optional_inputs_get_their_default() -> None:
    sig = Signature(
        "serving_default",
        {
            "text": TensorSpec("text", TEXT, (-1,)),
            "max_new_tokens": TensorSpec("max_new_tokens", np.dtype("int32"), (-1,), default=7),
        },
        {},
    )
    prepared = prepare_inputs(sig, {None: np.array(["a", "b"], dtype=object)})
    assert prepared.tensors["max_new_tokens"].tolist() == [7, 7]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({None: np.zeros((2, 3))}, "expects shape [-1, 2]"),
        ({"z": np.zeros((2, 2))}, "unknown input(s) ['z']"),
        ({"x": np.array(["a"], dtype=object)}, "expects float32 numbers, got strings"),
        ({"x": np.zeros((0, 2))}, "no rows"),
    ],
)
def test_bad_inputs_name_the_problem(raw: dict, fragment: str) -> None:
    sig = signature(x=TensorSpec("x", F32, (-1, 2)))
    with pytest.raises(InvalidInput) as error:
        prepare_inputs(sig, raw)
    assert fragment in str(error.value)


def test_two_inputs_need_names_and_matching_rows() -> None:
    sig = signature(a=TensorSpec("a", F32, (-1,)), b=TensorSpec("b", F32, (-1,)))
    with pytest.raises(InvalidInput, match="send them by name"):
        prepare_inputs(sig, {None: np.zeros(2)})
    with pytest.raises(InvalidInput, match="missing input"):
        prepare_inputs(sig, {"a": np.zeros(2)})
    with pytest.raises(InvalidInput, match="disagree on the number of rows"):
        prepare_inputs(sig, {"a": np.zeros(2), "b": np.zeros(3)})


def test_integer_inputs_refuse_fractions() -> None:
    sig = signature(n=TensorSpec("n", np.dtype("int32"), (-1,)))
    assert prepare_inputs(sig, {"n": np.array([2.0, 3.0])}).tensors["n"].dtype == np.int32
    with pytest.raises(InvalidInput, match="integers"):
        prepare_inputs(sig, {"n": np.array([2.5])})


def test_grouping_concat_and_split_round_trip() -> None:
    items = [
        BatchItem("s", {"x": np.ones((2, 3))}, 2),
        BatchItem("s", {"x": np.zeros((1, 4))}, 1),  # other row shape: own group
        BatchItem("s", {"x": np.full((3, 3), 2.0)}, 3),
        BatchItem("t", {"x": np.ones((1, 3))}, 1),  # other signature: own group
    ]
    groups = group_compatible(items)
    assert groups == [[0, 2], [1], [3]]
    batch = concat_inputs([items[0], items[2]])
    assert batch["x"].shape == (5, 3)
    parts = split_outputs({"y": batch["x"].sum(axis=1)}, [2, 3])
    assert parts[0]["y"].tolist() == [3.0, 3.0] and parts[1]["y"].tolist() == [6.0] * 3


def test_batch_stats_shape() -> None:
    stats = BatchStats()
    for rows in (1, 4, 4):
        stats.record(rows)
    assert stats.to_json() == {
        "inference_count": 9,
        "execution_count": 3,
        "batch_stats": [
            {"batch_size": 1, "compute_infer": {"count": 1}},
            {"batch_size": 4, "compute_infer": {"count": 2}},
        ],
    }
