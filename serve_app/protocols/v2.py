"""Open Inference Protocol (KServe V2) REST, with Triton's binary tensor data extension.

The binary extension matters because ``tritonclient`` uses it by default: the body is a
JSON header of ``Inference-Header-Content-Length`` bytes followed by raw tensor bytes, and
each binary input or output names its ``binary_data_size``.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serve_app.dtypes import V2_DATATYPES, first_misfit, numpy_dtype, out_of_range, v2_datatype
from serve_app.errors import InvalidInput
from serve_app.jsonio import numbers_json, parse_json
from serve_app.request import PredictRequest

HEADER_LENGTH = "Inference-Header-Content-Length"
# A 32 MiB body's length has 8 digits; 18 always fit an int64, and int() of thousands would
# raise (Python bounds the digits it converts).
MAX_HEADER_LENGTH_DIGITS = 18
# numpy 1 allows 32 dimensions (numpy 2: 64); no model takes more. Nested 'data' deeper than
# this is refused before any recursion or numpy sees it.
MAX_RANK = 32
MAX_DIMENSION = 2**63 - 1  # dimensions are int64 in the protocol (and in its gRPC form)
# String (BYTES) elements in one request, over all its inputs. Each becomes a Python object
# of about 50 bytes plus its text: 32 MiB of empty strings would be 8 million objects and
# seconds of CPU. The count comes from the shapes, so a request past it is refused before
# its data is read.
MAX_STRING_ELEMENTS = 65_536
# A JSON body's strings (keys and values), counted by their quotes before it is parsed: a
# parser makes an object of every one, 12 times the bytes of a one-character string.
MAX_JSON_STRINGS = 2 * MAX_STRING_ELEMENTS
# One encoder: json.dumps with non-default options builds a new one for every call.
_ENCODER = json.JSONEncoder(allow_nan=True, separators=(",", ":"))
# Request parameters that steer the protocol, not the model.
_PROTOCOL_PARAMETERS = {"binary_data_output", "signature_name", "priority", "timeout"}


@dataclass
class InferRequest:
    """A decoded infer request: the model request plus how to shape the answer."""

    request: PredictRequest
    id: str | None = None
    binary_outputs: set[str] = field(default_factory=set)
    binary_all: bool = False


def decode_infer(body: bytes, header_length: str | None) -> InferRequest:
    """Parse an infer body, JSON or JSON header + binary tensor data."""
    header, binary = _split(body, header_length)
    check_json_strings(header)
    document = parse_json(header)
    if not isinstance(document, dict):
        raise InvalidInput("infer request must be a JSON object with 'inputs'")
    unknown = sorted(set(document) - {"id", "parameters", "inputs", "outputs"})
    if unknown:
        raise InvalidInput(f"unknown key(s) {unknown} in infer request")
    parameters = _parameters(document.get("parameters"), "parameters")
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("'inputs' must be a non-empty list of tensors")
    tensors: dict[str | None, np.ndarray] = {}
    offset, strings = 0, 0
    for index, tensor in enumerate(inputs):
        name, array, offset = _decode_tensor(tensor, index, binary, offset, strings)
        if name in tensors:
            raise InvalidInput(f"input '{name}' appears twice")
        tensors[name] = array
        if array.dtype.kind == "O":
            strings += array.size
    if offset != len(binary):
        raise InvalidInput(
            f"{len(binary) - offset} bytes of binary data are not claimed by any input"
        )
    outputs, binary_outputs = _requested_outputs(document.get("outputs"))
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    signature = parameters.get("signature_name", "")
    if not isinstance(signature, str):
        raise InvalidInput("parameter 'signature_name' must be a string")
    model_parameters = {k: v for k, v in parameters.items() if k not in _PROTOCOL_PARAMETERS}
    request = PredictRequest(
        tensors, signature, parameters=model_parameters, outputs=outputs, exact_dtypes=True
    )
    return InferRequest(
        request, request_id, binary_outputs, bool(parameters.get("binary_data_output"))
    )


def check_json_strings(header: bytes) -> None:
    """400 before parsing a JSON body that holds more than ``MAX_JSON_STRINGS`` strings.

    Each string has two unescaped quotes; an escaped quote (``\\"``) is always preceded by a
    backslash, so quotes minus backslash-quote pairs never overcounts a valid body's
    strings. Two scans at C speed (milliseconds for 32 MiB).
    """
    quotes = header.count(b'"')
    if quotes <= 2 * MAX_JSON_STRINGS:
        return
    strings = (quotes - header.count(b'\\"')) // 2
    if strings > MAX_JSON_STRINGS:
        raise InvalidInput(
            f"request body holds {strings} JSON strings; at most {MAX_JSON_STRINGS} (keys"
            f" included) are accepted, and at most {MAX_STRING_ELEMENTS} BYTES elements per"
            " request: send fewer strings, or split the request"
        )


def check_string_elements(name: str, count: int, before: int) -> None:
    """400 before decoding an input of ``count`` BYTES elements that would take the
    request's string elements (``before`` in its earlier inputs) past ``MAX_STRING_ELEMENTS``."""
    if before + count > MAX_STRING_ELEMENTS:
        raise InvalidInput(
            f"input '{name}': {count} BYTES elements ({before + count} in the request); at most"
            f" {MAX_STRING_ELEMENTS} string elements are accepted per request: split the request"
        )


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    # str.isdigit() takes "²" and "٣", which int() then refuses or reads: ASCII digits only.
    digits = header_length.isascii() and header_length.isdigit()
    if (
        not digits
        or len(header_length) > MAX_HEADER_LENGTH_DIGITS
        or int(header_length) > len(body)
    ):
        raise InvalidInput(
            f"{HEADER_LENGTH} must be the length in bytes of the body's JSON header, in ASCII"
            f" digits and at most the body's {len(body)} bytes; got {_brief(header_length)}"
        )
    length = int(header_length)
    return body[:length], body[length:]


def _brief(value: Any) -> str:
    """A value as sent, for a message: quoted, escaped and short."""
    text = ascii(value) if isinstance(value, str) else _short_repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _short_repr(value: Any) -> str:
    try:
        return repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        return "(an integer of thousands of digits)"


_SCALARS = (str, int, float, bool)
MAX_PARAMETER_ITEMS = 64


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"'{where}' must be an object")
    for key, item in value.items():
        # Scalars, and flat lists of them (generation's ``stop``): a nested value could not
        # travel in a coalesced call, and would fail the requests beside it.
        items = item if isinstance(item, list) else [item]
        if len(items) > MAX_PARAMETER_ITEMS or not all(isinstance(i, _SCALARS) for i in items):
            raise InvalidInput(
                f"{where}.{key} must be a string, number, boolean or a list of at most"
                f" {MAX_PARAMETER_ITEMS} of them (not nested)"
            )
    return value


def _decode_tensor(
    tensor: Any, index: int, binary: bytes, offset: int, strings: int
) -> tuple[str, np.ndarray, int]:
    if not isinstance(tensor, dict):
        raise InvalidInput(f"inputs[{index}] must be an object")
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"inputs[{index}] needs a 'name'")
    shape, datatype = _shape(tensor.get("shape"), name), tensor.get("datatype")
    if not isinstance(datatype, str) or datatype not in V2_DATATYPES:
        raise InvalidInput(
            f"input '{name}': datatype {datatype!r} is not one of {', '.join(V2_DATATYPES)}"
        )
    parameters = _parameters(tensor.get("parameters"), f"inputs[{index}].parameters")
    count = math.prod(shape)
    if datatype == "BYTES":
        check_string_elements(name, count, strings)
    size = parameters.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise InvalidInput(f"input '{name}': binary_data_size {size} exceeds the binary data")
        raw = binary[offset : offset + size]
        values = _from_binary(raw, datatype, count, name)
        return name, _reshape(values, shape, name), offset + size
    if "data" not in tensor:
        raise InvalidInput(f"input '{name}' has no 'data' (or binary_data_size)")
    values = _from_json(tensor["data"], datatype, name)
    if values.size != count:
        raise InvalidInput(
            f"input '{name}': shape {shape} needs {count} values, 'data' has {values.size}"
        )
    return name, _reshape(values, shape, name), offset


def _shape(shape: Any, name: str) -> list[int]:
    """A tensor's shape: at most ``MAX_RANK`` int64 dimensions, each 0 or more."""
    # bool is an int in Python, but true is no dimension.
    if not isinstance(shape, list) or not all(type(d) is int for d in shape):
        raise InvalidInput(
            f"input '{name}': 'shape' must be a list of non-negative integers, got {_brief(shape)}"
        )
    if len(shape) > MAX_RANK:
        raise InvalidInput(
            f"input '{name}': 'shape' has {len(shape)} dimensions; at most {MAX_RANK} are supported"
        )
    for dimension in shape:
        if not 0 <= dimension <= MAX_DIMENSION:
            raise InvalidInput(
                f"input '{name}': 'shape' must be a list of non-negative integers of at most"
                f" 2^63-1 (int64), got dimension {_brief(dimension)}"
            )
    return shape


def _reshape(values: np.ndarray, shape: list[int], name: str) -> np.ndarray:
    try:
        return values.reshape(shape)
    except ValueError as exc:  # a zero dimension beside ones whose product passes 2^63
        raise InvalidInput(f"input '{name}': shape {_brief(shape)} cannot be made: {exc}") from None


def _from_json(data: Any, datatype: str, name: str) -> np.ndarray:
    flat = _flatten(data if isinstance(data, list) else [data], name)
    # Parsed JSON holds exactly these types; a set of them is checked at C speed.
    kinds = set(map(type, flat))
    if datatype == "BYTES":
        if not kinds <= {str}:
            raise InvalidInput(f"input '{name}': BYTES data must be strings")
        return np.array(flat, dtype=object)
    if datatype == "BOOL":
        if not kinds <= {bool}:
            raise InvalidInput(f"input '{name}': BOOL data must be true/false")
        return np.array(flat, dtype=bool)
    if not kinds <= {int, float}:  # a bool is not a number here
        raise InvalidInput(f"input '{name}': {datatype} data must be numbers")
    dtype = numpy_dtype(datatype)
    if dtype.kind in "iu" and float in kinds:
        raise InvalidInput(f"input '{name}': {datatype} data must be integers")
    try:
        with np.errstate(over="ignore"):  # a float past the dtype's range: named below
            values = np.array(flat, dtype=dtype)
    except OverflowError:
        values = None
    if values is None or (dtype.kind == "f" and not np.isfinite(values).all()):
        misfit = first_misfit(flat, dtype)
        if misfit is not None:
            raise InvalidInput(out_of_range(name, misfit, dtype, datatype))
        if values is None:
            raise InvalidInput(f"input '{name}': a value is out of range for {datatype}")
    return values


def _flatten(data: list, name: str) -> list:
    """Nested lists of values, flat; without recursion, and refused past ``MAX_RANK`` deep."""
    if not any(isinstance(item, list) for item in data):
        return data
    flat: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) >= MAX_RANK:
                    raise InvalidInput(
                        f"input '{name}': 'data' is nested more than {MAX_RANK} lists deep;"
                        f" a tensor has at most {MAX_RANK} dimensions"
                    )
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _from_binary(raw: bytes, datatype: str, count: int, name: str) -> np.ndarray:
    if datatype != "BYTES":
        dtype = numpy_dtype(datatype).newbyteorder("<")
        if len(raw) != count * dtype.itemsize:
            raise InvalidInput(
                f"input '{name}': {len(raw)} bytes of binary data, shape needs"
                f" {count * dtype.itemsize}"
            )
        return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="))
    if count * 4 > len(raw):  # every element has its 4-byte length: refused before reading
        raise InvalidInput(
            f"input '{name}': {len(raw)} bytes of binary BYTES data cannot hold {count} elements"
            " (each is a 4-byte length and its bytes)"
        )
    items, position = [], 0
    # Each element: 4-byte little-endian length, then the bytes. No more than the shape's
    # count are read: surplus data is refused below without turning it into objects.
    while position < len(raw) and len(items) < count:
        if position + 4 > len(raw):
            raise InvalidInput(f"input '{name}': truncated BYTES element length")
        (length,) = struct.unpack_from("<I", raw, position)
        items.append(raw[position + 4 : position + 4 + length])
        position += 4 + length
    if position != len(raw) or len(items) != count:
        raise InvalidInput(f"input '{name}': binary BYTES data does not hold {count} elements")
    return np.array(items, dtype=object)


def _requested_outputs(outputs: Any) -> tuple[list[str] | None, set[str]]:
    if outputs is None:
        return None, set()
    if not isinstance(outputs, list):
        raise InvalidInput("'outputs' must be a list of {name, parameters}")
    names, binary = [], set()
    for index, output in enumerate(outputs):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise InvalidInput(f"outputs[{index}] needs a 'name'")
        parameters = _parameters(output.get("parameters"), f"outputs[{index}].parameters")
        names.append(output["name"])
        if parameters.get("binary_data"):
            binary.add(output["name"])
    return names, binary


def encode_infer(
    model: str, version: int, infer: InferRequest, outputs: dict[str, np.ndarray]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it.

    The header is the bytes ``json.dumps`` writes (compact), with numeric data written by
    ``numbers_json``: a 384-float embedding takes 15 µs there instead of 200 µs.
    """
    described, blobs = [], []
    for name, array in outputs.items():
        entry = f'{{"name":{_ENCODER.encode(name)},"datatype":"{_datatype(array)}"'
        entry += f',"shape":{_ENCODER.encode(list(array.shape))}'.replace(" ", "")
        if infer.binary_all or name in infer.binary_outputs:
            blob = _to_binary(array)
            entry += f',"parameters":{{"binary_data_size":{len(blob)}}}}}'
            blobs.append(blob)
            described.append(entry.encode())
            continue
        if array.dtype.kind in "biuf":
            body = numbers_json(array)
        else:
            body = _ENCODER.encode(_to_json(array)).encode()
        described.append(entry.encode() + b',"data":' + body + b"}")
    head = f'{{"model_name":{_ENCODER.encode(model)},"model_version":"{version}"'
    if infer.id is not None:
        head += f',"id":{_ENCODER.encode(infer.id)}'
    header = head.encode() + b',"outputs":[' + b",".join(described) + b"]}"
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def _datatype(array: np.ndarray) -> str:
    try:
        return v2_datatype(array.dtype)
    except KeyError:
        raise InvalidInput(f"output dtype {array.dtype} has no Open Inference datatype") from None


def _to_json(array: np.ndarray) -> list:
    flat = array.reshape(-1)
    if flat.dtype.kind == "O":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in flat.tolist()]
    return flat.tolist()


def _to_binary(array: np.ndarray) -> bytes:
    if array.dtype.kind != "O":
        return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    parts = []
    for value in array.reshape(-1).tolist():
        data = value.encode() if isinstance(value, str) else bytes(value)
        parts.append(struct.pack("<I", len(data)) + data)
    return b"".join(parts)


def model_metadata(
    name: str, versions: list[int], platform: str, io_spec: dict[str, list]
) -> dict[str, Any]:
    """Model metadata from the signature's inputs/outputs ``[(name, dtype, shape)]``."""

    def tensors(entries: list) -> list[dict[str, Any]]:
        return [
            {"name": n, "datatype": v2_datatype(np.dtype(d)), "shape": list(s or [-1])}
            for n, d, s in entries
        ]

    return {
        "name": name,
        "versions": [str(v) for v in versions],
        "platform": platform,
        "inputs": tensors(io_spec["inputs"]),
        "outputs": tensors(io_spec["outputs"]),
    }
