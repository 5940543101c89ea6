"""JSON in and out, fast where it can be and as ``json`` writes and reads it where it matters.

Pure: the protocol codecs and the HTTP layer share it.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson

from serve_app.errors import InvalidInput


def json_bytes(content: Any) -> bytes:
    """JSON that writes NaN and Infinity as TF Serving does, instead of failing.

    orjson writes a response much faster than ``json``: an OpenAI embedding response (384
    floats) takes 10 µs instead of 270 µs. But it writes NaN and Infinity as ``null``. So
    a body with no ``null`` in it had none of them and is sent as is; one with a ``null``
    is written again by ``json``, which keeps NaN and Infinity as TF Serving writes them.
    """
    try:
        fast = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:  # e.g. an integer past 64 bits: json writes it
        fast = b"null"
    if b"null" not in fast:
        return fast
    return json.dumps(content, allow_nan=True, separators=(",", ":")).encode("utf-8")


def parse_json(body: bytes) -> Any:
    """A request body as JSON; NaN and Infinity allowed, as TF Serving does.

    orjson parses the common body; what it refuses (NaN, integers past 64 bits, other
    encodings, malformed JSON) is parsed again by ``json``, whose errors name the position.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except ValueError as exc:  # malformed, not UTF-8/16/32, an integer of thousands of digits
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput("request body is not valid JSON: nested too deeply") from None


# Python's repr (which json uses) writes floats below 1e-4 and from 1e16 up in scientific
# notation (1e-05, 1e+16); orjson writes some of them as decimals and its exponents without
# a sign or a leading zero (1e-6). Within that range both write the same shortest digits.
_REPR_SCIENTIFIC_BELOW, _REPR_SCIENTIFIC_FROM = 1e-4, 1e16


def numbers_json(array: np.ndarray) -> bytes:
    """A numeric array, flattened, as the bytes ``json.dumps(array.reshape(-1).tolist(),
    separators=(",", ":"), allow_nan=True)`` writes, at orjson's speed: a 384-float
    embedding takes about 20 µs instead of 170 µs."""
    flat = array.reshape(-1)
    values = flat.tolist()
    fast = orjson.dumps(values)
    if b"null" in fast:  # NaN or Infinity: json writes them as TF Serving and Triton do
        return json.dumps(values, allow_nan=True, separators=(",", ":")).encode()
    if flat.dtype.kind != "f":
        return fast
    magnitude = np.abs(flat, dtype=np.float64)
    odd = np.flatnonzero(
        ((magnitude < _REPR_SCIENTIFIC_BELOW) & (magnitude != 0))
        | (magnitude >= _REPR_SCIENTIFIC_FROM)
    )
    if odd.size == 0:
        return fast
    tokens = fast[1:-1].split(b",")
    for index in odd.tolist():
        tokens[index] = repr(values[index]).encode()
    return b"[" + b",".join(tokens) + b"]"
