"""Response bodies: orjson when it can, json where NaN/Infinity or huge integers appear."""

from __future__ import annotations

import json
import math

import numpy as np

from serve_app.jsonio import json_bytes


def test_plain_bodies_equal_what_json_writes() -> None:
    content = {"predictions": [[0.1, 2.5e-8, -3.0]], "name": "é", "n": 3, "ok": True}
    body = json_bytes(content)
    assert json.loads(body) == content
    assert b"NaN" not in body


def test_nan_and_infinity_are_written_as_tf_serving_writes_them() -> None:
    body = json_bytes({"predictions": [math.nan, math.inf, -math.inf, None]})
    assert body == b'{"predictions":[NaN,Infinity,-Infinity,null]}'


def test_values_orjson_refuses_still_get_a_body() -> None:
    assert json_bytes({"big": 2**70}) == b'{"big":1180591620717411303424}'
    assert json_bytes({"rows": np.arange(3)}) == b'{"rows":[0,1,2]}'
