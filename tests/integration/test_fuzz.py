"""Hypothesis-generated request bodies for each protocol against the live ``fleet``.

No generated input may yield a 5xx, a hang (every request has a client timeout) or a dead
replica: wrong bodies are 4xx naming what was wrong; right ones are answered.
"""

from __future__ import annotations

import json

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ray import serve

from tests.integration.fleet import WORKING_MODELS

pytestmark = pytest.mark.integration

FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
TIMEOUT_S = 60  # the hang guard
LEAKS = ("Traceback", 'File "', "site-packages")

TF_MODELS = ["digits", "half-plus-two", "two-versions", "multi"]
ALL_MODELS = [*TF_MODELS, "minilm", "tiny-gpt2", "sentiment"]
NAMES = st.one_of(st.sampled_from(ALL_MODELS), st.text(max_size=12))

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=16),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
small_numbers = st.one_of(
    st.integers(min_value=-3, max_value=3), st.floats(min_value=-10, max_value=10)
)
rows = st.lists(st.one_of(small_numbers, st.lists(small_numbers, max_size=4)), max_size=4)
instance_lists = st.one_of(rows, st.lists(json_values, max_size=3), json_values)

tfserving_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"instances": instance_lists}),
    st.fixed_dictionaries({"inputs": st.one_of(instance_lists, st.dictionaries(NAMES, rows))}),
    st.fixed_dictionaries(
        {"instances": instance_lists},
        optional={"signature_name": st.one_of(st.text(max_size=8), json_values)},
    ),
)
v2_tensor = st.fixed_dictionaries(
    {
        "name": st.one_of(st.sampled_from(["x", "k", "who", "inputs", "text"]), st.text()),
        "shape": st.one_of(
            st.lists(st.integers(min_value=-2, max_value=6), max_size=3), json_values
        ),
        "datatype": st.one_of(
            st.sampled_from(["FP32", "FP64", "INT64", "INT32", "BYTES", "BOOL", "FP16", "UINT8"]),
            st.text(max_size=6),
        ),
        "data": instance_lists,
    },
    optional={"parameters": json_values},
)
v2_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"inputs": st.lists(v2_tensor, max_size=3)},
        optional={
            "id": st.text(max_size=8),
            "outputs": st.lists(st.fixed_dictionaries({"name": st.text(max_size=8)}), max_size=2),
            "parameters": json_values,
        },
    ),
)
prompts = st.one_of(st.text(max_size=20), st.lists(st.text(max_size=12), max_size=3), json_values)
completion_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"model": st.one_of(st.sampled_from(["tiny-gpt2", "minilm", "nope"]), json_values)},
        optional={
            "prompt": prompts,
            # Cheap when valid (a few tokens); any size or type when not.
            "max_tokens": st.one_of(
                st.integers(min_value=-2, max_value=4),
                st.integers(min_value=1025, max_value=2**70),
                json_values,
            ),
            "n": st.one_of(st.integers(min_value=-1, max_value=3), json_values),
            "temperature": st.one_of(st.floats(allow_nan=True), json_values),
            "top_p": st.floats(allow_nan=True),
            "seed": st.one_of(st.integers(min_value=-(2**70), max_value=2**70), json_values),
            "stop": json_values,
            "stream": st.booleans(),
            "logprobs": json_values,
        },
    ),
)
embedding_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"model": st.one_of(st.sampled_from(["minilm", "tiny-gpt2", "nope"]), json_values)},
        optional={
            "input": st.one_of(
                st.text(max_size=20),
                st.lists(st.text(max_size=12), max_size=4),
                st.lists(st.lists(st.integers(min_value=-5, max_value=40000), max_size=4)),
                json_values,
            ),
            "encoding_format": st.one_of(st.sampled_from(["float", "base64"]), st.text()),
            "dimensions": json_values,
        },
    ),
)


def send(url: str, body: object, raw: bool = False) -> requests.Response:
    data = body if raw else json.dumps(body, allow_nan=True).encode()
    response = requests.post(
        url, data=data, headers={"Content-Type": "application/json"}, timeout=TIMEOUT_S
    )
    assert response.status_code < 500, (response.status_code, response.text, body)
    for leak in LEAKS:
        assert leak not in response.text, (response.text, body)
    return response


@pytest.fixture(scope="module")
def base(fleet: dict) -> str:
    return fleet["url"]


@pytest.fixture(scope="module", autouse=True)
def replicas_survive(fleet: dict):
    """After all the fuzzing, every working model is still HEALTHY on its first replica."""
    before = _replica_pids(fleet["url"])
    yield
    deployments = serve.status().applications["fleet"].deployments
    assert all(deployments[name].status.value == "HEALTHY" for name in WORKING_MODELS)
    assert _replica_pids(fleet["url"]) == before


def _replica_pids(url: str) -> dict[str, int]:
    pids = {}
    for name in ("digits", "half-plus-two", "multi", "minilm", "tiny-gpt2"):
        stats = requests.get(f"{url}/v2/models/{name}/stats", timeout=TIMEOUT_S).json()
        pids[name] = stats["replica"]["pid"]
    return pids


@FUZZ
@given(model=st.sampled_from(TF_MODELS), body=tfserving_bodies)
def test_fuzz_tfserving_predict(base, model, body):
    send(f"{base}/v1/models/{model}:predict", body)


@FUZZ
@given(model=st.sampled_from(TF_MODELS), body=v2_bodies)
def test_fuzz_v2_infer(base, model, body):
    send(f"{base}/v2/models/{model}/infer", body)


@FUZZ
@given(body=completion_bodies)
def test_fuzz_openai_completions(base, body):
    send(f"{base}/v1/completions", body)


@FUZZ
@given(body=embedding_bodies)
def test_fuzz_openai_embeddings(base, body):
    send(f"{base}/v1/embeddings", body)


@settings(FUZZ, max_examples=40)
@given(
    path=st.sampled_from(
        [
            "/v1/models/half-plus-two:predict",
            "/v1/models/sentiment:classify",
            "/v2/models/multi/infer",
            "/v1/completions",
            "/v1/embeddings",
        ]
    ),
    body=st.binary(max_size=64),
)
def test_fuzz_raw_bytes(base, path, body):
    send(f"{base}{path}", body, raw=True)
