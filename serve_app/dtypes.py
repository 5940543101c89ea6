"""Tensor datatype names across protocols: numpy <-> TensorFlow DataType <-> Open Inference."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

# numpy dtype name -> (TensorFlow DataType, Open Inference Protocol datatype)
_TABLE = {
    "bool": ("DT_BOOL", "BOOL"),
    "uint8": ("DT_UINT8", "UINT8"),
    "uint16": ("DT_UINT16", "UINT16"),
    "uint32": ("DT_UINT32", "UINT32"),
    "uint64": ("DT_UINT64", "UINT64"),
    "int8": ("DT_INT8", "INT8"),
    "int16": ("DT_INT16", "INT16"),
    "int32": ("DT_INT32", "INT32"),
    "int64": ("DT_INT64", "INT64"),
    "float16": ("DT_HALF", "FP16"),
    "float32": ("DT_FLOAT", "FP32"),
    "float64": ("DT_DOUBLE", "FP64"),
    "object": ("DT_STRING", "BYTES"),
}
_FROM_V2 = {v2: np.dtype(name) for name, (_, v2) in _TABLE.items()}
V2_DATATYPES = tuple(_FROM_V2)


def tf_datatype(dtype: np.dtype) -> str:
    """``DT_FLOAT`` style name; strings are ``object`` arrays and map to ``DT_STRING``."""
    return _TABLE.get(np.dtype(dtype).name, ("DT_INVALID", ""))[0]


def v2_datatype(dtype: np.dtype) -> str:
    """``FP32`` style name of a numpy dtype; raises KeyError for unsupported dtypes."""
    return _TABLE[np.dtype(dtype).name][1]


def numpy_dtype(v2_name: str) -> np.dtype:
    """The numpy dtype of an Open Inference Protocol datatype; KeyError if unknown."""
    return _FROM_V2[v2_name]


# --- value ranges: what a cast would wrap (300 -> int8 44), saturate or round to infinity ---


def value_range(dtype: np.dtype) -> str:
    """The values ``dtype`` holds, for error messages: ``-128 to 127``."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return f"{info.min} to {info.max}"
    if dtype.kind == "f":
        high = f"{float(np.finfo(dtype).max):.8g}"
        return f"-{high} to {high}, or NaN and Infinity"
    return "any"


def fits(value: object, dtype: np.dtype) -> bool:
    """Whether the Python number ``value`` casts to ``dtype`` without wrapping, saturating or
    rounding to infinity. Python compares ints and floats exactly, so the bounds are exact."""
    dtype = np.dtype(dtype)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return True  # not a number: the dtype checks refuse it, not the range checks
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return int(info.min) <= value <= int(info.max)
    if dtype.kind == "f":
        if isinstance(value, int):
            try:
                value = float(value)
            except OverflowError:  # past float64's range
                return False
        return not math.isfinite(value) or abs(value) < _overflow(dtype)
    return True


def first_misfit(values: Iterable[object], dtype: np.dtype) -> object | None:
    """The first Python number in ``values`` that ``dtype`` cannot hold, or None."""
    return next((v for v in values if not fits(v, dtype)), None)


def first_misfit_array(array: np.ndarray, dtype: np.dtype) -> object | None:
    """The first element of a numeric ``array`` that ``dtype`` cannot hold, or None.

    The vectorised bounds decide; only a failing array is walked to name the value."""
    dtype = np.dtype(dtype)
    if array.size == 0 or array.dtype.kind not in "iuf" or dtype.kind not in "iuf":
        return None
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        low, high = array.min().item(), array.max().item()
        if int(info.min) <= low and high <= int(info.max):
            return None
    elif dtype.itemsize >= 8:
        return None  # float64 holds every int64 and float64 (rounded, never to infinity)
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            cast = array.astype(dtype)
        if not (np.isinf(cast) & np.isfinite(array)).any():
            return None
    return first_misfit(array.reshape(-1).tolist(), dtype)


def out_of_range(name: str, value: object, dtype: np.dtype, dtype_name: str) -> str:
    """The message for a value of input ``name`` that ``dtype`` cannot hold."""
    return (
        f"input '{name}' has value {number_text(value)}, out of range for {dtype_name}"
        f" ({value_range(dtype)})"
    )


def number_text(value: object) -> str:
    """A number for a message, shortened when it has dozens of digits."""
    try:
        text = str(value)
    except ValueError:  # an int past Python's digit limit for str()
        return "(an integer of thousands of digits)"
    return text if len(text) <= 24 else f"{text[:12]}... ({len(text)} characters)"


def _overflow(dtype: np.dtype) -> float:
    """The smallest magnitude that rounds to infinity in a float ``dtype``: its largest
    value plus half a unit in the last place (float32: 2**128 - 2**103; float64: infinity,
    as every finite Python float is a float64)."""
    info = np.finfo(dtype)
    return float(info.max) + 2.0 ** (int(info.maxexp) - int(info.nmant) - 2)
