"""Model signatures and the checks that turn decoded request tensors into model inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serve_app.dtypes import first_misfit_array, out_of_range, tf_datatype, v2_datatype
from serve_app.errors import InvalidInput
from serve_app.request import INTERNAL_PREFIX


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: numpy dtype (``object`` for strings) and shape (-1 = any)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...] | None  # None: unknown rank
    default: Any = None  # inputs only: a value used for every row when the input is absent

    def to_tf_json(self) -> dict[str, Any]:
        """TF Serving's JSON form of a TensorInfo."""
        shape: dict[str, Any]
        if self.shape is None:
            shape = {"dim": [], "unknown_rank": True}
        else:
            dims = [{"size": str(d), "name": ""} for d in self.shape]
            shape = {"dim": dims, "unknown_rank": False}
        return {
            "dtype": tf_datatype(self.dtype),
            "tensor_shape": shape,
            "name": self.name,
        }


@dataclass(frozen=True)
class Signature:
    """A named function of the model: named inputs to named outputs."""

    name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    method_name: str = "tensorflow/serving/predict"
    required: tuple[str, ...] = field(default=())
    # False: the function takes no batch of rows (scalars, a fixed dimension 0, no inputs, or
    # state it changes per call): each request is one call, with its tensors as sent.
    batched: bool = True

    def __post_init__(self) -> None:
        if not self.required:
            needed = tuple(n for n, spec in self.inputs.items() if spec.default is None)
            object.__setattr__(self, "required", needed)

    def public_outputs(self) -> dict[str, TensorSpec]:
        """Outputs for clients; internal ones (``_`` names) serve protocol adapters."""
        return {n: s for n, s in self.outputs.items() if not n.startswith(INTERNAL_PREFIX)}

    def to_tf_json(self) -> dict[str, Any]:
        """TF Serving's JSON form of a SignatureDef."""
        return {
            "inputs": {n: s.to_tf_json() for n, s in self.inputs.items()},
            "outputs": {n: s.to_tf_json() for n, s in self.public_outputs().items()},
            "method_name": self.method_name,
            "defaults": {},
        }


# The one-row marker of a request to an unbatched signature (it may have no inputs at all).
UNBATCHED_ROW = INTERNAL_PREFIX + "row"


@dataclass(frozen=True)
class PreparedInputs:
    """Model-ready inputs, their row count, and whether a trailing unit dim was added.

    For an unbatched signature every tensor gets a leading axis of one row, so the request
    travels through batching like any other; ``restore`` takes that axis off again.
    """

    tensors: dict[str, np.ndarray]
    rows: int
    expanded: bool
    unbatched: bool = False

    def restore(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The request's outputs in the shape it was sent: undo the row axis or unit dim."""
        if self.unbatched:
            return {name: array[0] for name, array in outputs.items()}
        return squeeze_outputs(outputs) if self.expanded else outputs


def prepare_inputs(
    signature: Signature, raw: dict[str | None, np.ndarray], exact_dtypes: bool = False
) -> PreparedInputs:
    """Name, cast and shape-check decoded tensors against ``signature``.

    JSON numbers carry no dtype, so they are cast to the signature's; with ``exact_dtypes``
    (a protocol that declares datatypes) a declared datatype must match the signature's.
    """
    named = _assign_names(signature, raw)
    if exact_dtypes:
        for name, array in named.items():
            _require_dtype(signature.inputs[name], array)
    if not signature.batched:
        return _one_row(signature, named)
    if not named:
        raise InvalidInput(f"the request names no input of signature '{signature.name}'")
    prepared = {name: _conform(signature.inputs[name], array) for name, array in named.items()}
    expanded = any(prepared[n].ndim != array.ndim for n, array in named.items())
    rows = {name: array.shape[0] for name, array in prepared.items()}
    if len(set(rows.values())) > 1:
        raise InvalidInput(f"inputs disagree on the number of rows (dimension 0): {rows}")
    count = next(iter(rows.values()))
    if count == 0:
        raise InvalidInput("the request has no rows (dimension 0 is empty)")
    for name, spec in signature.inputs.items():
        if name not in prepared and spec.default is not None:
            prepared[name] = np.full((count,), spec.default, dtype=spec.dtype)
    return PreparedInputs(prepared, count, expanded)


def requested_outputs(signature: Signature, requested: list[str] | None) -> list[str]:
    """The outputs to return: the requested ones (checked), else every public output."""
    if requested is None:
        return [name for name in signature.outputs if not name.startswith(INTERNAL_PREFIX)]
    unknown = [name for name in requested if name not in signature.outputs]
    if unknown:
        public = [n for n in signature.outputs if not n.startswith(INTERNAL_PREFIX)]
        raise InvalidInput(
            f"unknown output(s) {unknown} for signature '{signature.name}'"
            f" (available: {', '.join(public)})"
        )
    return list(dict.fromkeys(requested))


def squeeze_outputs(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop a trailing unit dimension, mirroring an input sent one rank below the signature."""
    return {n: a[..., 0] if a.ndim > 1 and a.shape[-1] == 1 else a for n, a in outputs.items()}


def _one_row(signature: Signature, named: dict[str, np.ndarray]) -> PreparedInputs:
    """An unbatched signature's request: its tensors checked as sent, then one row of each."""
    tensors = {UNBATCHED_ROW: np.zeros((1,), dtype=np.bool_)}
    for name, array in named.items():
        spec = signature.inputs[name]
        array = _cast(spec, array)
        want = spec.shape
        if want is not None and (
            array.ndim != len(want) or any(w not in (-1, g) for w, g in zip(want, array.shape))
        ):
            raise InvalidInput(
                f"input '{name}' of signature '{signature.name}' expects shape {list(want)}"
                f" (-1 = any; this signature takes no batch of rows), got {list(array.shape)}"
            )
        tensors[name] = array[np.newaxis]
    for name, spec in signature.inputs.items():
        if name not in tensors and spec.default is not None:
            tensors[name] = np.asarray(spec.default, dtype=spec.dtype)[np.newaxis]
    return PreparedInputs(tensors, 1, False, unbatched=True)


def _assign_names(signature: Signature, raw: dict[str | None, np.ndarray]) -> dict[str, np.ndarray]:
    expected = ", ".join(signature.inputs)
    if not raw and not signature.required:
        return {}  # a signature without inputs (TF Serving's counter: get_counter)
    if None in raw:
        if len(signature.required) != 1:
            raise InvalidInput(
                f"signature '{signature.name}' has inputs [{expected}]: send them by name"
                " (objects in 'instances' or a mapping in 'inputs')"
            )
        return {signature.required[0]: raw[None]}
    unknown = [name for name in raw if name not in signature.inputs]
    if unknown:
        raise InvalidInput(
            f"unknown input(s) {unknown} for signature '{signature.name}' (expected: {expected})"
        )
    missing = [name for name in signature.required if name not in raw]
    if missing:
        raise InvalidInput(f"missing input(s) {missing} for signature '{signature.name}'")
    return dict(raw)  # type: ignore[arg-type]


def _require_dtype(spec: TensorSpec, array: np.ndarray) -> None:
    if array.dtype != spec.dtype:
        raise InvalidInput(
            f"input '{spec.name}' has datatype {_v2_name(array.dtype)},"
            f" the model expects {_v2_name(spec.dtype)}"
        )


def _v2_name(dtype: np.dtype) -> str:
    try:
        return v2_datatype(dtype)
    except KeyError:
        return dtype.name


def _conform(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    array = _cast(spec, array)
    if spec.shape is None:
        if array.ndim == 0:
            raise InvalidInput(f"input '{spec.name}' needs a batch dimension")
        return array
    want = list(spec.shape)
    # TF Serving accepts one rank less when the last dimension is 1 (a scalar per instance).
    if array.ndim == len(want) - 1 and want[-1] == 1:
        array = array[..., np.newaxis]
    if array.ndim != len(want) or any(w not in (-1, g) for w, g in zip(want, array.shape)):
        raise InvalidInput(
            f"input '{spec.name}' expects shape {want} (-1 = any), got {list(array.shape)}"
        )
    return array


def _cast(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    if spec.dtype.kind == "O":
        if array.dtype.kind != "O":
            raise InvalidInput(f"input '{spec.name}' expects strings, got numbers")
        return array
    if array.dtype.kind == "O":
        raise InvalidInput(f"input '{spec.name}' expects {spec.dtype.name} numbers, got strings")
    fractional = spec.dtype.kind in "iu" and array.dtype.kind == "f"
    if fractional and not (np.all(np.isfinite(array)) and np.all(np.mod(array, 1) == 0)):
        raise InvalidInput(f"input '{spec.name}' expects integers ({spec.dtype.name})")
    if spec.dtype.kind == "b" and array.dtype.kind != "b":
        raise InvalidInput(f"input '{spec.name}' expects booleans")
    if array.dtype != spec.dtype:
        # A cast would wrap (300 -> int8 44), saturate (1e20 -> int32 INT_MIN) or round to
        # infinity (1e300 -> float32): refuse the value instead, as the V2 codec does.
        misfit = first_misfit_array(array, spec.dtype)
        if misfit is not None:
            raise InvalidInput(out_of_range(spec.name, misfit, spec.dtype, spec.dtype.name))
    return array.astype(spec.dtype, copy=False)
