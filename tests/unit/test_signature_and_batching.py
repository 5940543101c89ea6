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


# --- out-of-range numbers: refused, never wrapped, saturated or rounded to infinity ---------


@pytest.mark.parametrize(
    ("dtype", "values", "fragment"),
    [
        ("int8", [1, 300], "value 300, out of range for int8 (-128 to 127)"),  # would be 44
        ("int32", [1e20], "value 1e+20, out of range for int32 (-2147483648 to 2147483647)"),
        ("int32", [2**32 + 5], "value 4294967301, out of range for int32"),  # would be 5
        ("uint8", [-1], "value -1, out of range for uint8 (0 to 255)"),
        ("int64", [2.0**63], "out of range for int64"),  # would be INT64_MIN
        ("uint32", [2**32], "out of range for uint32 (0 to 4294967295)"),
        ("float32", [1.0, 1e300], "value 1e+300, out of range for float32"),  # would be inf
        ("float16", [70000], "value 70000, out of range for float16 (-65504 to 65504"),
    ],
)
def test_values_the_signature_dtype_cannot_hold_are_400(dtype, values, fragment) -> None:
    sig = signature(n=TensorSpec("n", np.dtype(dtype), (-1,)))
    with pytest.raises(InvalidInput) as error:
        prepare_inputs(sig, {"n": np.array(values)})
    assert fragment in str(error.value) and "input 'n'" in str(error.value)


def test_unsigned_64_bit_values_past_int64_are_refused() -> None:
    sig = signature(n=TensorSpec("n", np.dtype("int64"), (-1,)))
    with pytest.raises(InvalidInput, match="value 18446744073709551615, out of range for int64"):
        prepare_inputs(sig, {"n": np.array([2**64 - 1], dtype=np.uint64)})


def test_unbatched_signatures_check_ranges_too() -> None:
    sig = Signature(
        "s",
        {"n": TensorSpec("n", np.dtype("int8"), ())},
        {"y": TensorSpec("y", F32, ())},
        batched=False,
    )
    with pytest.raises(InvalidInput, match="out of range for int8"):
        prepare_inputs(sig, {"n": np.array(128)})


def test_values_at_the_edges_and_non_finite_floats_are_kept() -> None:
    ints = signature(n=TensorSpec("n", np.dtype("int8"), (-1,)))
    assert prepare_inputs(ints, {"n": np.array([-128, 127.0])}).tensors["n"].tolist() == [-128, 127]
    floats = signature(n=TensorSpec("n", F32, (-1,)))
    edge = float(np.finfo(np.float32).max)
    kept = prepare_inputs(floats, {"n": np.array([edge, np.inf, np.nan, 2**40])}).tensors["n"]
    assert kept[0] == np.float32(edge) and np.isinf(kept[1]) and np.isnan(kept[2])
    wide = signature(n=TensorSpec("n", np.dtype("float64"), (-1,)))
    assert prepare_inputs(wide, {"n": np.array([1e300])}).tensors["n"][0] == 1e300
