"""TF Serving gRPC: ``tensorflow.serving`` messages <-> ``PredictRequest`` and numpy, no TensorFlow.

``TensorProto`` is read from its fields as TensorFlow reads it (``Tensor::FromProto``): the
bytes of ``tensor_content``, or the typed ``*_val`` field of its dtype, where fewer values
than the shape holds are padded with the last one (none: zeros). Outputs are written with the
typed fields, as TF Serving's ``Predict`` writes them (``AsProtoField``). Classify and regress
take ``tf.Example`` protos; their features become the same feature lists a REST request's JSON
examples become, so one model-side path serves both transports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from serve_app.dtypes import tf_datatype
from serve_app.errors import InvalidInput, NotFound, PayloadTooLarge, Unimplemented
from serve_app.protocols import protos, tfserving
from serve_app.request import CLASSIFY, REGRESS, PredictRequest

PredictRequestProto = protos.message("tensorflow.serving.PredictRequest")
PredictResponseProto = protos.message("tensorflow.serving.PredictResponse")
ClassificationRequestProto = protos.message("tensorflow.serving.ClassificationRequest")
ClassificationResponseProto = protos.message("tensorflow.serving.ClassificationResponse")
RegressionRequestProto = protos.message("tensorflow.serving.RegressionRequest")
RegressionResponseProto = protos.message("tensorflow.serving.RegressionResponse")
MultiInferenceRequestProto = protos.message("tensorflow.serving.MultiInferenceRequest")
MultiInferenceResponseProto = protos.message("tensorflow.serving.MultiInferenceResponse")
GetModelMetadataRequestProto = protos.message("tensorflow.serving.GetModelMetadataRequest")
GetModelMetadataResponseProto = protos.message("tensorflow.serving.GetModelMetadataResponse")
GetModelStatusRequestProto = protos.message("tensorflow.serving.GetModelStatusRequest")
GetModelStatusResponseProto = protos.message("tensorflow.serving.GetModelStatusResponse")
SignatureDefMapProto = protos.message("tensorflow.serving.SignatureDefMap")
TensorProto = protos.message("tensorflow.TensorProto")

DEFAULT_SIGNATURE = "serving_default"
OBJECT_ITEM_BYTES = 8  # a decoded DT_STRING element: one pointer in a numpy object array
SIGNATURE_DEF = "signature_def"  # the one metadata field TF Serving answers
# MultiInference task methods (signature_constants.h).
TASK_METHODS = {"tensorflow/serving/classify": CLASSIFY, "tensorflow/serving/regress": REGRESS}

_DATA_TYPES = protos.enum_values("tensorflow.TensorProto", "dtype")  # "DT_FLOAT" -> 1
_DATA_TYPE_NAMES = {number: name for name, number in _DATA_TYPES.items()}
# DataType -> (numpy dtype, the TensorProto field its values travel in, that field's dtype).
_TYPES: dict[str, tuple[np.dtype, str, np.dtype]] = {
    name: (np.dtype(dtype), field, np.dtype(field_dtype))
    for name, dtype, field, field_dtype in (
        ("DT_FLOAT", np.float32, "float_val", np.float32),
        ("DT_DOUBLE", np.float64, "double_val", np.float64),
        ("DT_HALF", np.float16, "half_val", np.int32),  # bit patterns of the halves
        ("DT_INT8", np.int8, "int_val", np.int32),
        ("DT_INT16", np.int16, "int_val", np.int32),
        ("DT_INT32", np.int32, "int_val", np.int32),
        ("DT_UINT8", np.uint8, "int_val", np.int32),
        ("DT_UINT16", np.uint16, "int_val", np.int32),
        ("DT_INT64", np.int64, "int64_val", np.int64),
        ("DT_UINT32", np.uint32, "uint32_val", np.uint32),
        ("DT_UINT64", np.uint64, "uint64_val", np.uint64),
        ("DT_BOOL", np.bool_, "bool_val", np.bool_),
        ("DT_STRING", object, "string_val", object),
    )
}


@dataclass(frozen=True)
class Target:
    """The model, version or label, and signature a request's ``ModelSpec`` names."""

    name: str
    version: int | None = None
    label: str | None = None
    signature_name: str = ""


def parse(message_class: Any, body: bytes) -> Any:
    """A request message from its bytes; INVALID_ARGUMENT if they are not one."""
    try:
        return message_class.FromString(body)
    except DecodeError as exc:
        raise InvalidInput(
            f"the request is not a valid {message_class.DESCRIPTOR.full_name}: {exc}"
        ) from None


def model_target(request: Any) -> Target:
    """The target of a request with a ``model_spec``; TF Serving's "Missing ModelSpec"."""
    if not request.HasField("model_spec"):
        raise InvalidInput("Missing ModelSpec")
    spec = request.model_spec
    choice = spec.WhichOneof("version_choice")
    return Target(
        spec.name,
        spec.version.value if choice == "version" else None,
        spec.version_label if choice == "version_label" else None,
        spec.signature_name,
    )


def fill_model_spec(spec: Any, name: str, version: int, signature_name: str | None) -> None:
    """A response's ``model_spec``, as TF Serving's ``MakeModelSpec`` writes it."""
    spec.name = name
    if signature_name is not None:
        spec.signature_name = signature_name or DEFAULT_SIGNATURE
    spec.version.value = version


# --- tensors ---------------------------------------------------------------------------------


def decode_tensor(proto: Any, name: str, max_bytes: int) -> np.ndarray:
    """A ``TensorProto`` as numpy; strings become an object array of bytes.

    ``max_bytes`` bounds the decoded size (a shape can ask for more values than were sent).
    """
    dtype_name = _DATA_TYPE_NAMES.get(proto.dtype, str(proto.dtype))
    if dtype_name not in _TYPES:
        raise InvalidInput(
            f"input '{name}' has dtype {dtype_name}, which is not supported"
            f" (supported: {', '.join(_TYPES)})"
        )
    dtype, field, field_dtype = _TYPES[dtype_name]
    if proto.tensor_shape.unknown_rank:
        raise InvalidInput(f"input '{name}' has an unknown rank; a tensor needs its shape")
    shape = [dim.size for dim in proto.tensor_shape.dim]
    if any(size < 0 for size in shape):
        raise InvalidInput(f"input '{name}' has shape {shape}; sizes must not be negative")
    count = math.prod(shape)
    # A string element costs at least its pointer once decoded, whatever its length.
    size = count * (OBJECT_ITEM_BYTES if dtype.kind == "O" else dtype.itemsize)
    if size > max_bytes:
        raise PayloadTooLarge(
            f"input '{name}' of shape {shape} holds {size} bytes, over the limit"
            f" (max_request_bytes) of {max_bytes}"
        )
    if proto.tensor_content:
        if dtype.kind == "O":
            raise InvalidInput(f"input '{name}': DT_STRING values go in string_val")
        if len(proto.tensor_content) != size:
            raise InvalidInput(
                f"input '{name}': tensor_content has {len(proto.tensor_content)} bytes,"
                f" shape {shape} of {dtype_name} needs {size}"
            )
        little = dtype.newbyteorder("<")
        return _reshape(np.frombuffer(proto.tensor_content, little).astype(dtype), shape, name)
    values = getattr(proto, field)
    if len(values) > count:
        raise InvalidInput(
            f"input '{name}' has {len(values)} values in {field}, shape {shape} holds {count}"
        )
    if dtype.kind == "O":
        flat = np.empty(len(values), dtype=object)
        flat[:] = list(values)
    else:
        flat = _typed_values(np.array(values, dtype=field_dtype), dtype, dtype_name, name)
    if len(flat) < count:  # TensorFlow pads with the last value (no values: zeros)
        last = flat[-1] if len(flat) else (b"" if dtype.kind == "O" else dtype.type(0))
        padding = np.full(count - len(flat), last, dtype=dtype)
        flat = np.concatenate([flat, padding]) if len(flat) else padding
    return _reshape(flat, shape, name)


def _reshape(flat: np.ndarray, shape: list[int], name: str) -> np.ndarray:
    try:
        return flat.reshape(shape)
    except ValueError as exc:  # a zero dimension beside ones whose product passes 2^63
        raise InvalidInput(
            f"input '{name}' has shape {shape}, which cannot be made: {exc}"
        ) from None


def _typed_values(values: np.ndarray, dtype: np.dtype, dtype_name: str, name: str) -> np.ndarray:
    """A typed field's values as ``dtype``; a value the dtype cannot hold is refused, not
    wrapped (TensorFlow would make 300 an int8 44)."""
    if dtype == np.float16:
        if values.size and (values.min() < 0 or values.max() > 0xFFFF):
            raise InvalidInput(f"input '{name}': half_val holds 16-bit patterns (0 to 65535)")
        return values.astype(np.uint16).view(np.float16)
    if values.dtype != dtype and dtype.kind in "iu" and values.size:
        info = np.iinfo(dtype)
        low, high = values.min(), values.max()
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise InvalidInput(
                f"input '{name}' has value {bad}, out of range for {dtype_name}"
                f" ({info.min} to {info.max})"
            )
    return values.astype(dtype, copy=False)


def encode_tensor(array: np.ndarray, proto: Any, name: str) -> None:
    """Fill ``proto`` (a ``TensorProto``) with ``array``, in the typed field of its dtype."""
    array = np.asarray(array)
    dtype_name = tf_datatype(array.dtype)
    if dtype_name not in _TYPES:
        raise InvalidInput(f"output '{name}' has dtype {array.dtype}, which has no DataType")
    proto.dtype = _DATA_TYPES[dtype_name]
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    flat = array.reshape(-1)
    field = getattr(proto, _TYPES[dtype_name][1])
    if array.dtype.kind == "O":
        field.extend(v if isinstance(v, bytes) else str(v).encode("utf-8") for v in flat.tolist())
    elif array.dtype == np.float16:
        field.extend(flat.view(np.uint16).tolist())
    else:
        field.extend(flat.tolist())


# --- Predict ---------------------------------------------------------------------------------


def decode_predict(body: bytes, max_bytes: int) -> tuple[Target, PredictRequest]:
    """A ``PredictRequest``: its target and the model request (datatypes must match the
    signature's, as TensorFlow requires; ``output_filter`` picks outputs)."""
    message = parse(PredictRequestProto, body)
    target = model_target(message)
    inputs: dict[str | None, np.ndarray] = {
        key: decode_tensor(tensor, key, max_bytes) for key, tensor in message.inputs.items()
    }
    seen: set[str] = set()
    for alias in message.output_filter:
        if alias in seen:
            raise InvalidInput(f"duplicate output tensor alias: {alias}")
        seen.add(alias)
    request = PredictRequest(
        inputs,
        target.signature_name,
        target.version,
        target.label,
        outputs=list(message.output_filter) or None,
        exact_dtypes=True,
    )
    return target, request


def encode_predict(target: Target, version: int, outputs: dict[str, np.ndarray]) -> Any:
    """A ``PredictResponse``: the served version and every requested output."""
    response = PredictResponseProto()
    fill_model_spec(response.model_spec, target.name, version, target.signature_name)
    for name, array in outputs.items():
        encode_tensor(array, response.outputs[name], name)
    return response


# --- Classify, Regress, MultiInference -------------------------------------------------------


def input_examples(proto: Any) -> list[dict[str, list[Any]]]:
    """An ``Input``'s examples as feature lists; ``context`` features join every example
    (an example's own feature of the same name wins, as merging the protos does)."""
    kind = proto.WhichOneof("kind")
    if kind == "example_list":
        return [_features(example) for example in proto.example_list.examples]
    if kind == "example_list_with_context":
        with_context = proto.example_list_with_context
        context = _features(with_context.context)
        return [{**context, **_features(example)} for example in with_context.examples]
    return []


def _features(example: Any) -> dict[str, list[Any]]:
    features = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")  # bytes_list, float_list or int64_list
        features[name] = list(getattr(feature, kind).value) if kind else []
    return features


def decode_examples(body: bytes, method: str) -> tuple[Target, PredictRequest]:
    """A ``ClassificationRequest`` or ``RegressionRequest``."""
    message_class = ClassificationRequestProto if method == CLASSIFY else RegressionRequestProto
    message = parse(message_class, body)
    target = model_target(message)
    request = PredictRequest(
        {},
        target.signature_name,
        target.version,
        target.label,
        method=method,
        examples=input_examples(message.input),
    )
    return target, request


def fill_classification(result: Any, outputs: dict[str, np.ndarray]) -> None:
    """A ``ClassificationResult`` from ``classes`` and/or ``scores`` (REST's rules)."""
    for row in tfserving.encode_classify(outputs)["results"]:
        classifications = result.classifications.add()
        for entry in row:
            cls = classifications.classes.add(label=entry[0])
            if len(entry) > 1:
                cls.score = entry[1]


def fill_regression(result: Any, outputs: dict[str, np.ndarray]) -> None:
    """A ``RegressionResult``: one value per example."""
    for value in tfserving.encode_regress(outputs)["results"]:
        result.regressions.add(value=value)


def encode_examples(
    target: Target, version: int, method: str, outputs: dict[str, np.ndarray]
) -> Any:
    """A ``ClassificationResponse`` or ``RegressionResponse``."""
    if method == CLASSIFY:
        response = ClassificationResponseProto()
        fill_classification(response.result, outputs)
    else:
        response = RegressionResponseProto()
        fill_regression(response.result, outputs)
    fill_model_spec(response.model_spec, target.name, version, target.signature_name)
    return response


@dataclass(frozen=True)
class MultiInference:
    """A decoded ``MultiInferenceRequest``: one request per task, over the same examples."""

    target: Target  # the first task's: its model and version serve every task
    tasks: list[tuple[str, PredictRequest]]  # (signature name as sent, request)


def decode_multi_inference(body: bytes) -> MultiInference:
    """TF Serving's checks (``multi_inference.cc``): one model, each signature once, each
    task a classify or regress."""
    message = parse(MultiInferenceRequestProto, body)
    if not message.tasks:
        raise NotFound("the MultiInferenceRequest has no tasks, so it names no model")
    first = model_target(message.tasks[0])
    examples = input_examples(message.input)
    seen: set[str] = set()
    tasks = []
    for task in message.tasks:
        spec = task.model_spec
        if not spec.name:
            raise InvalidInput("Found ModelSpec with an empty model name.")
        if spec.name != first.name:
            raise InvalidInput(
                "All ModelSpecs in a MultiInferenceRequest must access the same model name."
            )
        signature = spec.signature_name or DEFAULT_SIGNATURE
        if signature in seen:
            raise InvalidInput(f"Duplicate evaluation of signature: {signature}")
        seen.add(signature)
        method = TASK_METHODS.get(task.method_name)
        if method is None:
            raise Unimplemented(
                f"Unsupported signature method_name: {task.method_name} (a task is"
                f" {' or '.join(TASK_METHODS)})"
            )
        request = PredictRequest(
            {}, signature, first.version, first.label, method=method, examples=examples
        )
        tasks.append((spec.signature_name, request))
    return MultiInference(first, tasks)


def encode_multi_inference(
    decoded: MultiInference, answers: list[tuple[int, dict[str, np.ndarray]]]
) -> Any:
    """A ``MultiInferenceResponse``: one result per task, in the tasks' order."""
    response = MultiInferenceResponseProto()
    for (signature, request), (version, outputs) in zip(decoded.tasks, answers):
        result = response.results.add()
        fill_model_spec(result.model_spec, decoded.target.name, version, signature)
        if request.method == CLASSIFY:
            fill_classification(result.classification_result, outputs)
        else:
            fill_regression(result.regression_result, outputs)
    return response


# --- GetModelMetadata, GetModelStatus --------------------------------------------------------


def decode_metadata_request(body: bytes) -> Target:
    """A ``GetModelMetadataRequest``: ``signature_def`` is the one field TF Serving answers."""
    message = parse(GetModelMetadataRequestProto, body)
    target = model_target(message)
    if not message.metadata_field:
        raise InvalidInput("GetModelMetadataRequest must specify at least one metadata_field")
    for field in message.metadata_field:
        if field != SIGNATURE_DEF:
            raise InvalidInput(f"Metadata field {field} is not supported")
    return target


def encode_metadata(name: str, metadata: dict[str, Any]) -> Any:
    """A ``GetModelMetadataResponse`` from the model's metadata (REST's JSON document): the
    ``SignatureDefMap`` packed in an ``Any`` under ``signature_def``."""
    response = GetModelMetadataResponseProto()
    response.model_spec.name = name
    response.model_spec.version.value = int(metadata["model_spec"]["version"])
    signature_defs = json_format.ParseDict(
        metadata["metadata"][SIGNATURE_DEF], SignatureDefMapProto(), ignore_unknown_fields=True
    )
    response.metadata[SIGNATURE_DEF].Pack(signature_defs)
    return response


def decode_status_request(body: bytes) -> Target:
    """A ``GetModelStatusRequest``'s target."""
    return model_target(parse(GetModelStatusRequestProto, body))


def encode_status(statuses: list[dict[str, Any]]) -> Any:
    """A ``GetModelStatusResponse`` from REST's ``model_version_status`` entries."""
    return json_format.ParseDict({"model_version_status": statuses}, GetModelStatusResponseProto())
