"""Work before bounds: string elements are counted before they are decoded (V2 REST, binary
and gRPC), decoded tensors are counted against the ingress's body budget, and a coalesced
call is sized by its strings' bytes, not their pointers."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from serve_app import dataplane
from serve_app.errors import InvalidInput, Overloaded, PayloadTooLarge
from serve_app.guard import Settings
from serve_app.protocols import v2, v2_proto
from serve_app.request import PredictRequest

# The documented limits (docs/operations.md, "Limits").
LIMIT = 65_536
JSON_STRINGS = 131_072


def _json(*inputs: dict) -> bytes:
    return json.dumps({"inputs": list(inputs)}).encode()


def _strings(name: str, count: int) -> dict:
    return {"name": name, "shape": [count], "datatype": "BYTES", "data": ["a"] * count}


def test_a_json_body_of_too_many_strings_is_refused_before_it_is_parsed(monkeypatch) -> None:
    def parse_json(body: bytes) -> None:
        raise AssertionError("the body was parsed")

    monkeypatch.setattr(v2, "parse_json", parse_json)
    body = _json(_strings("text", JSON_STRINGS + 1))
    with pytest.raises(InvalidInput) as refused:
        v2.decode_infer(body, None)
    message = str(refused.value)
    assert f"at most {JSON_STRINGS}" in message and str(LIMIT) in message


def test_escaped_quotes_inside_strings_are_not_counted_as_strings() -> None:
    # Three times the limit's quotes, all escaped inside one short tensor: not refused.
    text = '"' * (3 * JSON_STRINGS)
    decoded = v2.decode_infer(_json(_strings("a", 1) | {"data": [text]}), None)
    assert decoded.request.inputs["a"].tolist() == [text]


def test_string_elements_past_the_limit_are_400_naming_it_json_and_binary() -> None:
    with pytest.raises(InvalidInput, match=f"at most {LIMIT} string elements"):
        v2.decode_infer(_json(_strings("a", LIMIT + 1)), None)
    # Binary: refused from the shape, before a byte of the data is read.
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "a",
                    "shape": [LIMIT + 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 4 * (LIMIT + 1)},
                }
            ]
        }
    ).encode()
    body = header + b"\0" * 4 * (LIMIT + 1)
    with pytest.raises(InvalidInput, match=f"input 'a': {LIMIT + 1} BYTES elements"):
        v2.decode_infer(body, str(len(header)))


def test_the_string_limit_counts_every_input_of_the_request() -> None:
    half = LIMIT // 2 + 1
    with pytest.raises(InvalidInput, match=f"{2 * half} in the request"):
        v2.decode_infer(_json(_strings("a", half), _strings("b", half)), None)
    decoded = v2.decode_infer(_json(_strings("a", half), _strings("b", LIMIT - half)), None)
    assert decoded.request.inputs["b"].size == LIMIT - half


def test_binary_bytes_too_short_for_its_shape_is_refused_before_reading() -> None:
    raw = struct.pack("<I", 1) + b"x"
    with pytest.raises(InvalidInput, match="5 bytes of binary BYTES data cannot hold 1000"):
        v2._from_binary(raw, "BYTES", 1000, "a")
    # Surplus elements past the shape's count are refused (and never all read).
    surplus = struct.pack("<I", 1) + b"x" + b"\0\0\0\0" * 1000
    with pytest.raises(InvalidInput, match="does not hold 1 elements"):
        v2._from_binary(surplus, "BYTES", 1, "a")
    assert v2._from_binary(raw, "BYTES", 1, "a").tolist() == [b"x"]


def _grpc_strings(count: int, raw: bool) -> bytes:
    request = service_pb2.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[count])
    if raw:
        request.raw_input_contents.append(b"\0\0\0\0" * count)
    else:
        tensor.contents.bytes_contents.extend([b""] * count)
    return request.SerializeToString()


@pytest.mark.parametrize("raw", [True, False])
def test_grpc_string_elements_past_the_limit_are_refused(raw: bool) -> None:
    with pytest.raises(InvalidInput, match=f"at most {LIMIT} string elements"):
        v2_proto.decode_infer(_grpc_strings(LIMIT + 1, raw))
    assert v2_proto.decode_infer(_grpc_strings(3, raw)).request.inputs["text"].size == 3


def test_strings_are_sized_by_their_bytes_not_their_pointers() -> None:
    texts = np.array(["x" * 1000] * 10, dtype=object)
    numbers = np.zeros((4, 8), dtype=np.float32)
    size = dataplane.tensor_bytes(PredictRequest({"text": texts, "n": numbers}))
    assert size >= 10 * 1000 + numbers.nbytes  # nbytes alone: 80 + 128


def test_decoded_tensors_are_held_against_the_body_budget() -> None:
    plane = dataplane.DataPlane("app", {}, {}, Settings(max_buffered_bytes=10_000, retry_after_s=1))
    plane.hold_decoded(6000)
    assert plane.bodies.held == 6000
    with pytest.raises(Overloaded, match="max_buffered_bytes"):  # 6000 + 6000 held: wait
        plane.hold_decoded(6000)
    with pytest.raises(PayloadTooLarge, match="decoded tensors take 20000 bytes"):  # never fits
        plane.hold_decoded(20_000)
    plane.bodies.give(6000)
    assert plane.bodies.held == 0
