"""Tensor datatype names across protocols: numpy <-> TensorFlow DataType <-> Open Inference."""

from __future__ import annotations

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
