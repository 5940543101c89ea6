"""Bearer tokens over real HTTP: non-ASCII tokens match, every model route needs one.

An application of its own (``tokens``) with two tokens, one of them non-ASCII. Tokens are
compared as UTF-8 bytes: a client sends a non-ASCII token UTF-8 encoded (as curl does with a
UTF-8 terminal). Requests are written byte for byte (``raw_http``).
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import TFSERVING_TESTDATA
from tests.integration.conftest import deploy_and_wait, undeploy
from tests.integration.raw_http import send

pytestmark = pytest.mark.integration

APP = "tokens"
ASCII_TOKEN = "ascii-token-0123456789abcdef"
UNICODE_TOKEN = "t\u00f6k\u00e9n-\u00fcn\u00efc\u00f8d\u00e9-\u2603-0123456789"
HALF_PLUS_TWO = str(TFSERVING_TESTDATA / "saved_model_half_plus_two_cpu")


@pytest.fixture(scope="module")
def url(serve_url: str):
    args = {
        "models": [
            {
                "name": "hp",
                "framework": "tensorflow",
                "uri": HALF_PLUS_TWO,
                "resources": {"num_cpus": 0.25},
            }
        ],
        "ingress": {"num_cpus": 0.25, "auth_tokens": [ASCII_TOKEN, UNICODE_TOKEN]},
    }
    deploy_and_wait(APP, args)
    yield serve_url
    undeploy(APP)


def call(url: str, method: str, path: str, authorization: bytes | None = None, body=None):
    headers = [(b"Content-Type", b"application/json")]
    if authorization is not None:
        headers.append((b"Authorization", authorization))
    data = b"" if body is None else json.dumps(body).encode()
    return send(url, method, f"/{APP}{path}".encode(), headers, data)


PREDICT = {"instances": [1.0, 2.0]}


def test_a_non_ascii_token_sent_as_utf8_is_accepted(url):
    header = b"Bearer " + UNICODE_TOKEN.encode("utf-8")
    answer = call(url, "POST", "/v1/models/hp:predict", header, PREDICT)
    assert header in answer.sent  # the UTF-8 bytes, not a client's re-encoding
    assert answer.status == 200, answer.text
    assert answer.json() == {"predictions": [2.5, 3.0]}
    ascii_header = b"Bearer " + ASCII_TOKEN.encode()
    assert call(url, "POST", "/v1/models/hp:predict", ascii_header, PREDICT).status == 200
    # The same text in another encoding, or a prefix of its bytes, is another token.
    for wrong in (
        UNICODE_TOKEN.encode("latin-1", "replace"),
        UNICODE_TOKEN.encode("utf-8")[:-1],
    ):
        refused = call(url, "POST", "/v1/models/hp:predict", b"Bearer " + wrong, PREDICT)
        assert refused.status == 401, refused.text
        assert refused.json() == {"error": "invalid bearer token"}


MODEL_ROUTES = [
    ("GET", "/v2/models/hp/stats"),
    ("GET", "/v2/models/hp/stats/"),
    ("GET", "/v2/models/hp"),
    ("GET", "/v2/models/hp/ready"),
    ("GET", "/v2/models/hp/versions/123"),
    ("GET", "/v2/models/hp/versions/123/ready"),
    ("GET", "/v2/models/hp/labels/stable"),
    ("GET", "/v1/models/hp"),
    ("GET", "/v1/models/hp/metadata"),
    ("GET", "/v1/models"),
    ("GET", "/v2"),
    ("GET", "/docs"),
    ("GET", "/openapi.json"),
    ("POST", "/v1/models/hp:predict"),
    ("POST", "/v2/models/hp/infer"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    # Routes that merely end in a probe's path are model routes, not probes.
    ("GET", "/v1/models/hp/v2/health/live"),
    ("GET", "/v1/models/hp/v2/health/ready/"),
    ("POST", "/v1/models/hp/-/healthz"),
]


@pytest.mark.parametrize(("method", "path"), MODEL_ROUTES)
def test_every_model_route_needs_the_token(url, method, path):
    answer = call(url, method, path, body=PREDICT if method == "POST" else None)
    assert answer.status == 401, (answer.status, answer.text[:300])
    assert answer.headers["www-authenticate"].startswith("Bearer")
    for detail in ("pid", "rss_bytes", "placement", "model_stats"):
        assert detail not in answer.text


def test_replica_statistics_answer_with_the_token_only(url):
    header = b"Bearer " + UNICODE_TOKEN.encode("utf-8")
    stats = call(url, "GET", "/v2/models/hp/stats", header)
    assert stats.status == 200, stats.text
    assert stats.json()["replica"]["pid"] > 0  # what the 401s above keep to themselves
    assert call(url, "GET", "/v2/models/hp/stats", b"Bearer wrong-token-0123456789").status == 401


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready"])
def test_health_probes_stay_open(url, path):
    answer = call(url, "GET", path)
    assert answer.status == 200, answer.text
