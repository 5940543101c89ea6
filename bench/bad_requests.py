"""Bad requests of every class issue 15 names, for the load test's mixed mode.

Each is a request a careless or hostile client sends to the default fleet (``digits``,
``minilm``, ``tiny-gpt2``): the server must answer it with a 4xx naming what was wrong,
and the good requests beside it must not notice. Built once; the load test cycles
through them. Paths are sent as written (``yarl.URL(..., encoded=True)``).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024  # ingress.max_request_bytes by default
DEFAULT_MAX_INSTANCES = 4096  # ingress.max_instances_per_request by default
V2_HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class BadRequest:
    """One bad request: its class (what is wrong), and what to send."""

    kind: str
    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON_HEADERS))
    method: str = "POST"


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


def _v2_bytes(
    model: str, name: str, items: list[bytes], length: str | None = None
) -> tuple[str, bytes, dict[str, str]]:
    """A V2 infer request with one BYTES input in Triton's binary form: path, body, headers
    (``length`` replaces the true Inference-Header-Content-Length)."""
    blob = b"".join(struct.pack("<I", len(item)) + item for item in items)
    tensor = {
        "name": name,
        "shape": [len(items)],
        "datatype": "BYTES",
        "parameters": {"binary_data_size": len(blob)},
    }
    header = _json({"inputs": [tensor]})
    headers = {
        "Content-Type": "application/octet-stream",
        V2_HEADER_LENGTH: str(len(header)) if length is None else length,
    }
    return f"/v2/models/{model}/infer", header + blob, headers


def _v2_digits(tensor: dict) -> bytes:
    return _json({"inputs": [{"name": "pixels", "datatype": "FP32", **tensor}]})


def catalogue(
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_instances: int = DEFAULT_MAX_INSTANCES,
) -> list[BadRequest]:
    """Every bad request, grouped by class, in a fixed order (the load test cycles through)."""
    digits = "/v1/models/digits:predict"
    v2_digits = "/v2/models/digits/infer"
    row = [0.0] * 64
    nested = "[" * 5000 + "]" * 5000
    requests = [
        ("malformed_json", digits, b'{"instances": [[1, 2'),
        ("malformed_json", v2_digits, b'{"inputs": [{"name": "pixels",'),
        ("deep_nesting", digits, b'{"instances": ' + nested.encode() + b"}"),
        ("deep_nesting", digits, _json({"instances": _nest(row, 600)})),
        ("deep_nesting", v2_digits, _v2_digits({"shape": [1, 64], "data": _nest(row, 600)})),
        ("huge_int", digits, b'{"instances": [[1' + b"0" * 5000 + b"]]}"),
        ("huge_int", digits, _json({"instances": [[10**400] * 64]})),
        ("surrogate", "/v1/embeddings", b'{"model": "minilm", "input": "\\ud800 lone"}'),
        (
            "surrogate",
            "/v1/completions",
            b'{"model": "tiny-gpt2", "prompt": "x\\udfff", "max_tokens": 2}',
        ),
        ("invalid_utf8", *_v2_bytes("tiny-gpt2", "text", [b"ok", b"\xff\xfe not UTF-8"])),
        (
            "invalid_utf8",
            "/v1/models/tiny-gpt2:predict",
            _json({"instances": [{"text": {"b64": "//79"}, "max_new_tokens": 2}]}),
        ),
        ("bad_shape", v2_digits, _v2_digits({"shape": [1] * 65, "data": row[:1]})),
        ("bad_shape", v2_digits, _v2_digits({"shape": [0, 2**63], "data": []})),
        ("bad_shape", v2_digits, _v2_digits({"shape": [True, 64], "data": row})),
        ("bad_shape", digits, _json({"instances": [row, row[:3]]})),
        ("out_of_range", digits, _json({"instances": [[1e300] * 64]})),
        ("out_of_range", v2_digits, _v2_digits({"shape": [1, 64], "data": [1e39] * 64})),
        (
            "out_of_range",
            "/v1/models/tiny-gpt2:predict",
            _json({"instances": [{"text": "hi", "max_new_tokens": 2**32 + 2}]}),
        ),
        ("bad_version", "/v1/models/digits/versions/" + "9" * 5000 + ":predict", _json({})),
        ("bad_version", "/v1/models/digits/versions/%D9%A3:predict", _json({"instances": [row]})),
        ("bad_version", "/v2/models/digits/versions/%C2%B2/infer", _v2_digits({"shape": [1]})),
        ("bad_header", *_v2_bytes("tiny-gpt2", "text", [b"hello"], length="9" * 5000)),
        ("bad_header", *_v2_bytes("tiny-gpt2", "text", [b"hello"], length="\u00b2")),
        ("oversized", digits, b" " * (max_request_bytes + 1)),
        ("too_many_instances", digits, _json({"instances": [[0.0]] * (max_instances + 1)})),
    ]
    return [BadRequest(kind, path, body, *more) for kind, path, body, *more in requests]


KINDS = (
    "malformed_json",
    "deep_nesting",
    "huge_int",
    "surrogate",
    "invalid_utf8",
    "bad_shape",
    "out_of_range",
    "bad_version",
    "bad_header",
    "oversized",
    "too_many_instances",
)


def _nest(value: list, depth: int) -> list:
    """``value`` inside ``depth - 1`` more lists."""
    for _ in range(depth - 1):
        value = [value]
    return value
