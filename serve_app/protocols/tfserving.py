"""TensorFlow Serving REST: paths, predict request decoding and response encoding.

Follows tensorflow_serving/g3doc/api_rest.md: row (``instances``) and columnar (``inputs``)
formats, ``{"b64": ...}`` binary values, single-output responses without the output name.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from serve_app.dtypes import first_misfit, number_text, value_range
from serve_app.errors import InvalidInput
from serve_app.request import MAX_VERSION_DIGITS, PredictRequest

# TF Serving matches these paths case-insensitively (http_rest_api_util.cc); its RE2 ``\d``
# is ASCII, while Python's would take any Unicode digit ("٣"), so the class is spelled out.
_MODEL_PATH = re.compile(
    r"(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>-?[0-9]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<suffix>/metadata|:predict|:classify|:regress)?",
    re.IGNORECASE,
)
# Versions are int64: 18 digits always fit (and int() of thousands of digits would raise).
# Deeper JSON than any tensor's rank (numpy 1 allows 32 dimensions) is refused before any
# recursion or numpy sees it.
MAX_DEPTH = 32
_INT64 = np.dtype(np.int64)
_FLOAT32 = np.dtype(np.float32)


@dataclass(frozen=True)
class ModelPath:
    """A parsed ``/v1/models/...`` path."""

    name: str
    version: int | None
    label: str | None
    action: str  # "status", "metadata", "predict", "classify" or "regress"


def parse_model_path(path: str) -> ModelPath:
    """Parse the part of a TF Serving REST path after ``/v1/models/``."""
    match = _MODEL_PATH.fullmatch(path)
    if match is None:
        # TF Serving answers INVALID_ARGUMENT "Malformed request" (400), as for a bad body.
        raise InvalidInput(
            f"Malformed request: /v1/models/{path[:200]} (expected /v1/models/<name>"
            "[/versions/<n>|/labels/<label>][/metadata|:predict|:classify|:regress],"
            " <n> in ASCII digits)"
        )
    suffix = (match["suffix"] or "").lower().lstrip("/:")
    return ModelPath(match["name"], _version(match["version"]), match["label"], suffix or "status")


def _version(text: str | None) -> int | None:
    if text is None:
        return None
    if text.startswith("-") or len(text) > MAX_VERSION_DIGITS:
        raise InvalidInput(
            f"version must be a non-negative integer of at most {MAX_VERSION_DIGITS} digits,"
            f" got '{text[:32]}{'...' if len(text) > 32 else ''}'"
        )
    return int(text)


def _signature_name(body: Any, method: str, keys: tuple[str, ...]) -> str:
    """Check a request body's shape and keys; return its ``signature_name`` ("" = default)."""
    quoted = [f"'{key}'" for key in keys]
    if not isinstance(body, dict):
        raise InvalidInput(f"request body must be a JSON object with {' or '.join(quoted)}")
    unknown = sorted(set(body) - {"signature_name", *keys})
    if unknown:
        raise InvalidInput(
            f"unknown key(s) {unknown} in {method} request"
            f" (expected: signature_name, {', '.join(keys)})"
        )
    signature = body.get("signature_name", "")
    if not isinstance(signature, str):
        raise InvalidInput("'signature_name' must be a string")
    return signature


def decode_predict(body: Any, json_instances: bool = False) -> tuple[PredictRequest, bool]:
    """A predict body -> (request, row_format). Row format answers with ``predictions``.

    With ``json_instances`` (a model that decodes its instances itself), ``instances`` stay
    as sent, JSON values, checked only for nesting deeper than any tensor; the model answers
    each row as JSON where it can (``json_rows``).
    """
    signature = _signature_name(body, "predict", ("instances", "inputs"))
    if ("instances" in body) == ("inputs" in body):
        raise InvalidInput("predict request needs exactly one of 'instances' or 'inputs'")
    if "instances" not in body:
        return PredictRequest(_decode_columns(body["inputs"]), signature), False
    instances = body["instances"]
    if not json_instances:
        return PredictRequest(decode_instances(instances), signature), True
    if not isinstance(instances, list) or not instances:
        raise InvalidInput("'instances' must be a non-empty list")
    for index, instance in enumerate(instances):
        check_depth(instance, f"instances[{index}]")
    return PredictRequest({}, signature, instances=instances, json_rows=True), True


def check_depth(value: Any, where: str) -> None:
    """Refuse JSON nested deeper than ``MAX_DEPTH`` (lists and objects), without recursion:
    deeper values cannot be tensors, and would fail whatever carries them on."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if not isinstance(item, (list, dict)):
            continue
        if depth > MAX_DEPTH:
            raise InvalidInput(f"{where} is nested more than {MAX_DEPTH} levels deep")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (list, dict)))


def decode_examples(body: Any, method: str) -> PredictRequest:
    """A classify/regress body: ``examples`` (features per example) plus shared ``context``."""
    signature = _signature_name(body, method, ("examples", "context"))
    examples, context = body.get("examples"), body.get("context", {})
    if not isinstance(examples, list) or not examples:
        raise InvalidInput("'examples' must be a non-empty list of objects")
    if not isinstance(context, dict):
        raise InvalidInput("'context' must be an object of features")
    merged = []
    checked = {name: _feature(name, value) for name, value in context.items()}
    for index, example in enumerate(examples):
        if not isinstance(example, dict):
            raise InvalidInput(f"examples[{index}] must be an object of features")
        # Features of an example override the context's features of the same name.
        own = {name: _feature(name, value) for name, value in example.items()}
        merged.append({**checked, **own})
    return PredictRequest({}, signature, method=method, examples=merged)


def _feature(name: str, value: Any) -> Any:
    """A tf.Example feature as sent (b64 unwrapped), checked against what its protobuf list
    holds: int64_list (int64 range), float_list (float32 range) or bytes_list (bytes, or
    text that is valid Unicode). A value it cannot hold is refused here, not in the model."""
    values = _unwrap_b64(value, name)
    flat = values if isinstance(values, list) else [values]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
        kind, dtype = "int64_list", _INT64
    elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
        kind, dtype = "float_list", _FLOAT32
    elif all(isinstance(v, (str, bytes)) for v in flat):
        for item in flat:
            if isinstance(item, str):
                _check_text(item, f"feature '{name}'")
        return values
    else:
        raise InvalidInput(
            f"feature '{name}' must be integers, numbers, strings or b64 values, or a flat"
            " list of one of these kinds (write booleans as 0 or 1)"
        )
    misfit = first_misfit(flat, dtype)
    if misfit is not None:
        raise InvalidInput(
            f"feature '{name}' has value {number_text(misfit)}, out of range for a tf.Example"
            f" {kind} ({value_range(dtype)})"
        )
    return values


def _check_text(text: str, where: str) -> None:
    """Text must encode as UTF-8: JSON's escapes can spell a lone surrogate (``"\\ud800"``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"{where} has text that is not valid Unicode ({exc.reason} at character"
            f' {exc.start}); send valid UTF-8 text, or bytes as {{"b64": ...}}'
        ) from None


def encode_classify(outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """``{"results": [[[label, score], ...], ...]}`` from ``classes`` and/or ``scores``."""
    scores, classes = outputs.get("scores"), outputs.get("classes")
    if scores is None and classes is None:
        raise InvalidInput("the classify signature has neither 'classes' nor 'scores' outputs")
    rows = len(scores if scores is not None else classes)
    results = []
    for row in range(rows):
        row_scores = [] if scores is None else np.asarray(scores[row]).reshape(-1).tolist()
        row_classes = (
            [""] * len(row_scores)
            if classes is None
            else [_text(c) for c in np.asarray(classes[row]).reshape(-1)]
        )
        if scores is None:
            results.append([[label] for label in row_classes])
        else:
            results.append([[c, sc] for c, sc in zip(row_classes, row_scores)])
    return {"results": results}


def encode_regress(outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """``{"results": [value, ...]}``, one value per example."""
    values = outputs.get("outputs")
    if values is None:
        if len(outputs) != 1:
            raise InvalidInput("the regress signature has no 'outputs' output")
        (values,) = outputs.values()
    return {"results": np.asarray(values).reshape(len(values), -1)[:, 0].tolist()}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def decode_instances(instances: Any) -> dict[str | None, np.ndarray]:
    """TF Serving's row format (``instances``) as tensors: unnamed, or named per object key."""
    if not isinstance(instances, list) or not instances:
        raise InvalidInput("'instances' must be a non-empty list")
    if not any(isinstance(row, dict) and not _is_b64(row) for row in instances):
        return {None: to_array(instances, "instances")}
    if not all(isinstance(row, dict) and not _is_b64(row) for row in instances):
        raise InvalidInput("'instances' mixes named (object) and unnamed rows")
    names = list(instances[0])
    for index, row in enumerate(instances):
        if sorted(row) != sorted(names):
            raise InvalidInput(
                f"instances[{index}] has inputs {sorted(row)}, expected {sorted(names)}"
                " (every instance must name the same inputs)"
            )
    return {name: to_array([row[name] for row in instances], name) for name in names}


def _decode_columns(inputs: Any) -> dict[str | None, np.ndarray]:
    if isinstance(inputs, dict) and not _is_b64(inputs):
        if not inputs:
            raise InvalidInput("'inputs' must not be empty")
        return {name: to_array(value, name) for name, value in inputs.items()}
    return {None: to_array(inputs, "inputs")}


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _unwrap_b64(value: Any, name: str) -> Any:
    """``value`` with every ``{"b64": ...}`` decoded to bytes; nested lists are walked without
    recursion, and refused past ``MAX_DEPTH`` (JSON may nest far deeper than a tensor)."""
    if not isinstance(value, list):
        return _unwrap_leaf(value, name)
    top: list = []
    stack: list[tuple[Any, list]] = [(iter(value), top)]
    while stack:
        items, out = stack[-1]
        for item in items:
            if isinstance(item, list):
                if len(stack) >= MAX_DEPTH:
                    raise InvalidInput(
                        f"input '{name}' is nested more than {MAX_DEPTH} lists deep; a tensor"
                        f" has at most {MAX_DEPTH} dimensions"
                    )
                inner: list = []
                out.append(inner)
                stack.append((iter(item), inner))
                break
            out.append(_unwrap_leaf(item, name))
        else:
            stack.pop()
    return top


def _unwrap_leaf(value: Any, name: str) -> Any:
    if _is_b64(value):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise InvalidInput(f"input '{name}' has a 'b64' value that is not base64") from None
    if isinstance(value, dict):
        raise InvalidInput(f"input '{name}' contains an object; expected numbers, strings or b64")
    return value


def to_array(value: Any, name: str) -> np.ndarray:
    """JSON value -> numpy array; strings and bytes become an object array."""
    value = _unwrap_b64(value, name)
    try:
        array = np.asarray(value)
    except ValueError:
        raise InvalidInput(
            f"input '{name}' is ragged: every row must have the same shape"
        ) from None
    if array.dtype.kind in "USO":
        array = array.astype(object)
        if any(isinstance(item, (list, dict)) for item in array.flat):
            raise InvalidInput(f"input '{name}' is ragged: every row must have the same shape")
        if all(isinstance(item, (int, float)) for item in array.flat):
            return _wide_numbers(array, name)
        if not all(isinstance(item, (str, bytes)) for item in array.flat):
            raise InvalidInput(f"input '{name}' mixes strings and numbers")
    elif array.dtype.kind not in "biuf":
        raise InvalidInput(f"input '{name}' has unsupported values ({array.dtype})")
    return array


def _wide_numbers(array: np.ndarray, name: str) -> np.ndarray:
    """Numbers numpy keeps as objects (integers past 64 bits, or negative ones with ones past
    int64): as float64, as TF Serving's JSON parser reads them. The signature's dtype then
    takes them or names the value it cannot hold."""
    try:
        return array.astype(np.float64)
    except OverflowError:
        big = first_misfit(array.flat, np.dtype(np.float64))
        raise InvalidInput(
            f"input '{name}' has value {number_text(big)}, larger than any tensor dtype holds"
            f" (float64: {value_range(np.dtype(np.float64))})"
        ) from None


def encode_predict(outputs: dict[str, np.ndarray], row_format: bool) -> dict[str, Any]:
    """Model outputs -> ``{"predictions": ...}`` (row) or ``{"outputs": ...}`` (columnar)."""
    if row_format:
        if len(outputs) == 1:
            ((name, array),) = outputs.items()
            return {"predictions": _to_json(array, name)}
        columns = {name: _to_json(array, name) for name, array in outputs.items()}
        rows = len(next(iter(columns.values())))
        return {
            "predictions": [{name: col[i] for name, col in columns.items()} for i in range(rows)]
        }
    if len(outputs) == 1:
        ((name, array),) = outputs.items()
        return {"outputs": _to_json(array, name)}
    return {"outputs": {name: _to_json(array, name) for name, array in outputs.items()}}


def _to_json(array: np.ndarray, name: str) -> Any:
    if array.dtype.kind != "O":
        return array.tolist()
    # TF Serving base64-encodes outputs named *_bytes; other byte strings are text.
    as_b64 = name.endswith("_bytes")
    return np.vectorize(lambda item: _bytes_to_json(item, as_b64), otypes=[object])(array).tolist()


def _bytes_to_json(item: Any, as_b64: bool) -> Any:
    if not isinstance(item, bytes):
        return item
    if as_b64:
        return {"b64": base64.b64encode(item).decode("ascii")}
    try:
        return item.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(item).decode("ascii")}
