"""Python models (``framework: python``): a user's class, served like any framework.

The args name the class by import path, ``python: {class: "my_pkg.scorer:Scorer"}``; it is
imported from the Python path of the replica (the image, the working directory or the
application's ``runtime_env``), never from the model bucket. The contract::

    class Scorer:
        inputs = {"x": ("float32", [-1, 4])}      # the declared signature (metadata, checks)
        outputs = {"y": ("float32", [-1, 4])}
        def __init__(self, path: str, options: dict): ...   # once per version
        def preprocess(self, instance) -> dict: ...         # optional: one instance -> one row
        def predict(self, inputs: dict) -> dict: ...        # a whole batch of numpy arrays
        def postprocess(self, row: dict): ...               # optional: one row -> JSON answer

``preprocess`` gets one instance as the client sent it: one element of TF Serving REST's
``instances`` (a JSON value), or one row of the typed inputs of a tensor protocol (V2, gRPC,
TF Serving's columnar ``inputs``). It runs off the event loop, before batching; a
``ValueError`` fails that request alone with 400. ``postprocess`` answers each row of a TF
Serving REST ``instances`` request (as ``predictions``); tensor protocols answer with the
declared outputs.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field

from deployments.servable import DEFAULT_SIGNATURE, Servable, StopCheck
from deployments.signature import Signature, TensorSpec
from serve_app.dtypes import numpy_dtype
from serve_app.errors import InvalidInput, ModelLoadError, ServingError
from serve_app.protocols.tfserving import decode_instances
from serve_app.request import PREDICT, PredictRequest

CLASS_PATH_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
# Names a declared dtype may have beyond numpy's and the Open Inference Protocol's.
STRING_DTYPES = ("string", "str", "bytes", "object")


class PythonOptions(BaseModel):
    """``python:`` in a model's args."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    class_: Annotated[str, Field(alias="class", pattern=CLASS_PATH_PATTERN, max_length=256)]
    # Passed to the class's ``__init__`` as ``options``.
    options: dict[str, Any] = {}


class PythonModel(Servable):
    """A user's model class, loaded once per version from the version's local directory."""

    platform = "python"
    options_model = PythonOptions
    json_instances = True  # TF Serving REST instances reach ``preprocess`` as sent

    def load(self, path: Path) -> None:
        options = self.parse_options(self.spec.options)
        model_class = import_class(self.name, options.class_)
        try:
            self._user = model_class(str(path), dict(options.options))
        except Exception as exc:
            raise ModelLoadError(
                f"model '{self.name}': {options.class_}(path, options) failed:"
                f" {type(exc).__name__}: {exc}"
            ) from None
        inputs = declared_tensors(self.name, self._user, "inputs")
        outputs = declared_tensors(self.name, self._user, "outputs")
        self._signature = Signature(DEFAULT_SIGNATURE, inputs, outputs)
        self._preprocess = getattr(self._user, "preprocess", None)
        self._postprocess = getattr(self._user, "postprocess", None)

    def signatures(self) -> dict[str, Signature]:
        return {DEFAULT_SIGNATURE: self._signature}

    def warm_up(self) -> None:
        """No made-up request: zeros may mean nothing to a user's code (its ``__init__`` is
        the load check)."""

    # --- requests ------------------------------------------------------------------------

    def preprocesses(self, request: PredictRequest) -> bool:
        return request.instances is not None or (
            self._preprocess is not None and request.method == PREDICT
        )

    def preprocess(self, request: PredictRequest) -> dict[str | None, np.ndarray]:
        """The batch rows of one request: each instance through ``preprocess``, stacked."""
        if request.instances is not None and self._preprocess is None:
            return decode_instances(request.instances)
        instances = request.instances if request.instances is not None else _rows(request.inputs)
        rows = []
        for index, instance in enumerate(instances):
            try:
                row = self._preprocess(instance)
            except ValueError as exc:
                raise InvalidInput(f"model '{self.name}' refused instance {index}: {exc}") from None
            if not isinstance(row, dict):
                raise ServingError(
                    f"model '{self.name}' failed in preprocess: it returned"
                    f" {type(row).__name__}, expected a dict of inputs"
                )
            rows.append(row)
        return self._stack(rows)

    def _stack(self, rows: list[dict[str, Any]]) -> dict[str | None, np.ndarray]:
        """Rows of inputs as batch tensors of the declared dtypes."""
        names = list(rows[0])
        batch: dict[str | None, np.ndarray] = {}
        for name in names:
            spec = self._signature.inputs.get(name)
            values = []
            for index, row in enumerate(rows):
                if name not in row:
                    raise InvalidInput(
                        f"instance {index} has inputs {sorted(row)} after preprocess,"
                        f" instance 0 has {sorted(names)}"
                    )
                values.append(row[name])
            if spec is not None and spec.dtype.kind == "O":
                array = np.empty(len(values), dtype=object)
                array[:] = values
                batch[name] = array
                continue
            try:
                batch[name] = np.asarray(values)
            except ValueError:
                raise InvalidInput(
                    f"input '{name}' differs in shape between instances after preprocess"
                ) from None
        return batch

    def infer(
        self,
        signature: str,
        inputs: dict[str, np.ndarray],
        parameters: dict[str, Any],
        stop: StopCheck | None = None,
    ) -> dict[str, np.ndarray]:
        rows = len(next(iter(inputs.values())))
        result = self._user.predict(dict(inputs))
        if not isinstance(result, dict):
            raise ServingError(
                f"model '{self.name}' failed: predict returned {type(result).__name__},"
                " expected a dict of outputs"
            )
        outputs = {}
        for name, spec in self._signature.outputs.items():
            if name not in result:
                raise ServingError(
                    f"model '{self.name}' failed: predict returned no output '{name}'"
                    f" (it returned {sorted(map(str, result))})"
                )
            array = np.asarray(result[name])
            if array.ndim == 0 or len(array) != rows:
                raise ServingError(
                    f"model '{self.name}' failed: predict's output '{name}' has shape"
                    f" {list(array.shape)}, expected {rows} rows (one per input row)"
                )
            outputs[name] = array if spec.dtype.kind == "O" else array.astype(spec.dtype)
        return outputs

    def postprocesses(self, request: PredictRequest) -> bool:
        return request.json_rows and self._postprocess is not None

    def postprocess(self, outputs: dict[str, np.ndarray]) -> list[bytes]:
        rows = len(next(iter(outputs.values())))
        return [
            orjson.dumps(
                self._postprocess({name: array[i] for name, array in outputs.items()}),
                option=orjson.OPT_SERIALIZE_NUMPY,
            )
            for i in range(rows)
        ]


def import_class(model: str, path: str) -> type:
    """The class ``module.path:Name`` from the replica's Python path; a load error naming
    what failed otherwise."""
    module_name, _, class_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ModelLoadError(
            f"model '{model}': cannot import python.class '{path}': {type(exc).__name__}: {exc}"
            " (the module must be on the replica's Python path: the image, the working"
            " directory or the application's runtime_env)"
        ) from None
    found = getattr(module, class_name, None)
    if not isinstance(found, type):
        raise ModelLoadError(f"model '{model}': module '{module_name}' has no class '{class_name}'")
    if not callable(getattr(found, "predict", None)):
        raise ModelLoadError(f"model '{model}': class '{path}' has no method 'predict'")
    return found


def declared_tensors(model: str, user: Any, which: str) -> dict[str, TensorSpec]:
    """A class's declared ``inputs`` or ``outputs``: ``{name: (dtype, [-1, ...])}``."""
    declared = getattr(user, which, None)
    where = f"model '{model}': {type(user).__name__}.{which}"
    if not isinstance(declared, dict) or not declared:
        raise ModelLoadError(
            f"{where} must be a non-empty dict {{name: (dtype, shape)}}, e.g."
            f' {{"x": ("float32", [-1, 4])}}'
        )
    specs = {}
    for name, value in declared.items():
        if not isinstance(name, str) or not isinstance(value, (tuple, list)) or len(value) != 2:
            raise ModelLoadError(f"{where}['{name}'] must be (dtype, shape), got {value!r}")
        dtype_name, shape = value
        dtype = _dtype(str(dtype_name))
        if dtype is None:
            raise ModelLoadError(
                f"{where}['{name}'] has dtype '{dtype_name}'; use a numpy name (float32,"
                " int64, bool, ...), an Open Inference datatype (FP32, ...) or 'string'"
            )
        dims = list(shape) if isinstance(shape, (tuple, list)) else None
        if (
            not dims
            or not all(isinstance(d, int) and d >= -1 and d != 0 for d in dims)
            or dims[0] != -1
        ):
            raise ModelLoadError(
                f"{where}['{name}'] has shape {shape!r}; give a list of dimensions, the batch"
                " dimension first as -1 (e.g. [-1, 4]), -1 for any size"
            )
        specs[name] = TensorSpec(name, dtype, tuple(dims))
    return specs


def _dtype(name: str) -> np.dtype | None:
    if name.lower() in STRING_DTYPES:
        return np.dtype(object)
    try:
        return numpy_dtype(name)
    except KeyError:
        pass
    try:
        dtype = np.dtype(name)
    except TypeError:
        return None
    return dtype if dtype.kind in "biuf" else None


def _rows(inputs: dict[str | None, np.ndarray]) -> list[Any]:
    """One instance per row of a tensor request: ``{name: row}`` (an unnamed input's row as
    it is)."""
    if not inputs:
        raise InvalidInput("the request has no inputs")
    if any(a.ndim == 0 for a in inputs.values()):
        raise InvalidInput("every input needs a batch dimension (one row per instance)")
    counts = {len(a) for a in inputs.values()}
    if len(counts) != 1:
        raise InvalidInput("inputs disagree on the number of rows (dimension 0)")
    count = counts.pop()
    if None in inputs:
        (array,) = inputs.values()
        return [array[i] for i in range(count)]
    return [{name: array[i] for name, array in inputs.items()} for i in range(count)]
