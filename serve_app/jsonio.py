"""JSON in and out, fast where it can be and as ``json`` writes and reads it where it matters.

Pure: the protocol codecs and the HTTP layer share it.
"""

from __future__ import annotations

import json
import re
from typing import Any

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


# Numbers orjson writes otherwise than Python's repr (which json uses): exponents (1e-6 for
# 1e-06, 1e16 for 1e+16), decimals below 1e-4 (0.00001 for 1e-05), and above 1e16.
_NOT_REPR = re.compile(rb"-?\d+(?:\.\d+)?e-?\d+|-?0\.0000\d*|-?\d{17,}\.\d+")


def numbers_json(values: list) -> bytes:
    """A list of numbers (nested lists allowed) as the bytes ``json.dumps(values,
    separators=(",", ":"), allow_nan=True)`` writes, at orjson's speed."""
    fast = orjson.dumps(values)
    if b"null" in fast:  # NaN or Infinity: json writes them as TF Serving and Triton do
        return json.dumps(values, allow_nan=True, separators=(",", ":")).encode()
    return _NOT_REPR.sub(lambda m: repr(float(m.group(0))).encode(), fast)
