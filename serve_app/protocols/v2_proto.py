"""Open Inference Protocol gRPC (``inference.GRPCInferenceService``) <-> ``PredictRequest``.

Tensors come either in ``raw_input_contents`` (one little-endian blob per input, BYTES
elements each prefixed by its 4-byte length: what ``tritonclient`` sends) or in the typed
``contents`` fields; outputs always go back in ``raw_output_contents``, as Triton answers.
The raw layout is the one of Triton's binary tensor extension on REST, so the two share
``serve_app/protocols/v2.py``'s conversions (its module-private ``_from_binary``,
``_to_binary``, ``_datatype`` and ``_PROTOCOL_PARAMETERS``: one definition for both).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import json_format

from serve_app.dtypes import V2_DATATYPES, first_misfit_array, numpy_dtype, out_of_range
from serve_app.errors import InvalidInput
from serve_app.protocols import protos, v2
from serve_app.protocols.tfserving_proto import parse
from serve_app.request import MAX_VERSION_DIGITS, PredictRequest

ModelInferRequestProto = protos.message("inference.ModelInferRequest")
ModelInferResponseProto = protos.message("inference.ModelInferResponse")
ModelMetadataRequestProto = protos.message("inference.ModelMetadataRequest")
ModelMetadataResponseProto = protos.message("inference.ModelMetadataResponse")
ModelReadyRequestProto = protos.message("inference.ModelReadyRequest")
ModelReadyResponseProto = protos.message("inference.ModelReadyResponse")
ServerLiveResponseProto = protos.message("inference.ServerLiveResponse")
ServerReadyResponseProto = protos.message("inference.ServerReadyResponse")
ServerMetadataResponseProto = protos.message("inference.ServerMetadataResponse")

# The typed field of ``InferTensorContents`` for each datatype, and that field's dtype. FP16
# and BF16 have none: they travel in raw_input_contents only.
_CONTENTS: dict[str, tuple[str, np.dtype]] = {
    name: (field, np.dtype(dtype))
    for name, field, dtype in (
        ("BOOL", "bool_contents", np.bool_),
        ("INT8", "int_contents", np.int32),
        ("INT16", "int_contents", np.int32),
        ("INT32", "int_contents", np.int32),
        ("INT64", "int64_contents", np.int64),
        ("UINT8", "uint_contents", np.uint32),
        ("UINT16", "uint_contents", np.uint32),
        ("UINT32", "uint_contents", np.uint32),
        ("UINT64", "uint64_contents", np.uint64),
        ("FP32", "fp32_contents", np.float32),
        ("FP64", "fp64_contents", np.float64),
        ("BYTES", "bytes_contents", object),
    )
}


@dataclass(frozen=True)
class ModelInfer:
    """A decoded ``ModelInferRequest``: the model it names and the model request."""

    name: str
    version: int | None
    id: str
    request: PredictRequest


def parse_version(text: str) -> int | None:
    """A ``model_version`` string: empty for the default version, else a number (int64)."""
    if not text:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_VERSION_DIGITS:
        raise InvalidInput(
            f"model_version must be empty or a version number of at most {MAX_VERSION_DIGITS}"
            f" digits, got '{text[:32]}'"
        )
    return int(text)


def decode_infer(body: bytes) -> ModelInfer:
    """A ``ModelInferRequest``; a declared datatype must match the model's, as in Triton."""
    message = parse(ModelInferRequestProto, body)
    version = parse_version(message.model_version)
    raw = message.raw_input_contents
    if not message.inputs:
        raise InvalidInput("the request has no inputs")
    if raw and len(raw) != len(message.inputs):
        raise InvalidInput(
            f"the request has {len(raw)} raw_input_contents for {len(message.inputs)} inputs:"
            " send one per input, in the order of the inputs (or none, and use contents)"
        )
    tensors: dict[str | None, np.ndarray] = {}
    strings = 0
    for index, tensor in enumerate(message.inputs):
        if not tensor.name:
            raise InvalidInput(f"inputs[{index}] needs a name")
        if tensor.name in tensors:
            raise InvalidInput(f"input '{tensor.name}' appears twice")
        array = _decode_tensor(tensor, raw[index] if raw else None, strings)
        tensors[tensor.name] = array
        if array.dtype.kind == "O":
            strings += array.size
    parameters = {key: _parameter(key, value) for key, value in message.parameters.items()}
    signature = parameters.get("signature_name", "")
    if not isinstance(signature, str):
        raise InvalidInput("parameter 'signature_name' must be a string")
    request = PredictRequest(
        tensors,
        signature,
        version,
        parameters={k: v for k, v in parameters.items() if k not in v2._PROTOCOL_PARAMETERS},
        outputs=[output.name for output in message.outputs] or None,
        exact_dtypes=True,
    )
    return ModelInfer(message.model_name, version, message.id, request)


def _decode_tensor(tensor: Any, raw: bytes | None, strings: int) -> np.ndarray:
    name, datatype = tensor.name, tensor.datatype
    if datatype not in V2_DATATYPES:
        raise InvalidInput(
            f"input '{name}': datatype {datatype!r} is not one of {', '.join(V2_DATATYPES)}"
        )
    shape = list(tensor.shape)
    if len(shape) > v2.MAX_RANK:
        raise InvalidInput(
            f"input '{name}': shape has {len(shape)} dimensions; at most {v2.MAX_RANK} are"
            " supported"
        )
    if any(size < 0 for size in shape):
        raise InvalidInput(f"input '{name}': shape {shape} has a negative dimension")
    count = math.prod(shape)
    if datatype == "BYTES":
        v2.check_string_elements(name, count, strings)
    if raw is not None:
        if tensor.HasField("contents"):
            raise InvalidInput(
                f"input '{name}': contents must not be given when the request uses"
                " raw_input_contents"
            )
        return v2._reshape(v2._from_binary(raw, datatype, count, name), shape, name)
    if datatype not in _CONTENTS:
        raise InvalidInput(
            f"input '{name}': {datatype} data travels in raw_input_contents"
            " (InferTensorContents has no field for it)"
        )
    field, field_dtype = _CONTENTS[datatype]
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}': shape {shape} needs {count} values, contents.{field} has"
            f" {len(values)}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return v2._reshape(array, shape, name)
    array = np.array(values, dtype=field_dtype)
    dtype = numpy_dtype(datatype)
    misfit = first_misfit_array(array, dtype)
    if misfit is not None:
        raise InvalidInput(out_of_range(name, misfit, dtype, datatype))
    return v2._reshape(array.astype(dtype, copy=False), shape, name)


def _parameter(key: str, value: Any) -> Any:
    """An ``InferParameter`` as a Python value."""
    choice = value.WhichOneof("parameter_choice")
    if choice is None:
        raise InvalidInput(f"parameter '{key}' has no value")
    return getattr(value, choice)


def encode_infer(decoded: ModelInfer, version: int, outputs: dict[str, np.ndarray]) -> Any:
    """A ``ModelInferResponse``, every output in ``raw_output_contents``."""
    response = ModelInferResponseProto(
        model_name=decoded.name, model_version=str(version), id=decoded.id
    )
    for name, array in outputs.items():
        response.outputs.add(name=name, datatype=v2._datatype(array), shape=array.shape)
        response.raw_output_contents.append(v2._to_binary(array))
    return response


def decode_model_request(message_class: Any, body: bytes) -> tuple[str, int | None]:
    """A ``ModelMetadataRequest`` or ``ModelReadyRequest``: (name, version)."""
    message = parse(message_class, body)
    return message.name, parse_version(message.version)


def encode_metadata(metadata: dict[str, Any]) -> Any:
    """A ``ModelMetadataResponse`` from REST's metadata document (the same fields)."""
    return json_format.ParseDict(metadata, ModelMetadataResponseProto())
