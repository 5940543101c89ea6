"""Backpressure, deadlines, limits, auth and request ids, over real HTTP on real Ray Serve.

One application of its own (``robust``) with tight settings: a slow model with a one-request
queue, a model whose batches wait two seconds, bearer auth, a 1 s default deadline.
"""

from __future__ import annotations

import glob
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.helpers import TFSERVING_TESTDATA, wait_for
from tests.integration.conftest import deploy_and_wait, undeploy

pytestmark = pytest.mark.integration

APP = "robust"
TOKEN = "robust-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LONG = {**AUTH, "X-Request-Timeout-Seconds": "60"}
HALF_PLUS_TWO = str(TFSERVING_TESTDATA / "saved_model_half_plus_two_cpu")
LEAKS = ("Traceback", 'File "', "site-packages", "/work/", "/home/")


def robust_args() -> dict:
    small = {"num_cpus": 0.25}
    return {
        "models": [
            {
                # One request at a time, one waiting: the rest are refused at once.
                "name": "slow",
                "framework": "tensorflow",
                "uri": HALF_PLUS_TWO,
                "batching": {"max_batch_size": 64, "batch_wait_timeout_s": 1.0},
                "max_ongoing_requests": 1,
                "max_queued_requests": 1,
                "resources": small,
            },
            {
                # Batches wait 2 s to fill: a request with a 1 s deadline times out inside one.
                "name": "batchy",
                "framework": "tensorflow",
                "uri": HALF_PLUS_TWO,
                "batching": {"max_batch_size": 64, "batch_wait_timeout_s": 2.0},
                "resources": small,
            },
        ],
        "ingress": {
            "num_cpus": 0.25,
            "max_request_bytes": 4096,
            "max_instances_per_request": 4,
            "request_timeout_s": 1.0,
            "max_request_timeout_s": 120,
            "auth_tokens": [TOKEN],
            "overload": {"status_code": 429, "retry_after_s": 2},
            "access_log": True,  # off by default; test_request_id_is_returned_and_logged
        },
    }


@pytest.fixture(scope="module")
def url(serve_url: str):
    deploy_and_wait(APP, robust_args())
    yield f"{serve_url}/{APP}"
    undeploy(APP)


def predict(url: str, model: str, instances: list, headers: dict, timeout: float = 90):
    return requests.post(
        f"{url}/v1/models/{model}:predict",
        json={"instances": instances},
        headers=headers,
        timeout=timeout,
    )


def assert_no_leak(response: requests.Response) -> None:
    for leak in LEAKS:
        assert leak not in response.text, response.text


# --- auth -----------------------------------------------------------------------------------


def test_auth_refuses_missing_and_wrong_tokens_in_each_protocols_body(url):
    missing = predict(url, "slow", [1.0], {})
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert "bearer token" in missing.json()["error"]
    wrong = requests.post(
        f"{url}/v2/models/slow/infer",
        json={"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
        headers={"Authorization": "Bearer not-the-token-0123456789"},
        timeout=30,
    )
    assert wrong.status_code == 401 and "invalid bearer token" in wrong.json()["error"]
    openai = requests.post(f"{url}/v1/completions", json={"model": "x", "prompt": "hi"}, timeout=30)
    assert openai.status_code == 401
    assert "bearer token" in openai.json()["error"]["message"]
    # Model metadata is protected too; the health probes are open.
    assert requests.get(f"{url}/v2/models/slow", timeout=30).status_code == 401
    assert requests.get(f"{url}/v2/health/live", timeout=30).status_code == 200
    assert requests.get(f"{url}/v2/health/ready", timeout=30).status_code == 200


def test_auth_accepts_the_configured_token(url):
    response = predict(url, "slow", [1.0, 2.0], LONG)
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [2.5, 3.0]}


# --- request id -----------------------------------------------------------------------------


def test_request_id_is_returned_and_logged(url):
    import ray

    response = predict(url, "slow", [1.0], {**LONG, "X-Request-Id": "robust-req-42"})
    assert response.status_code == 200
    assert response.headers["X-Request-Id"] == "robust-req-42"
    generated = predict(url, "slow", [1.0], LONG).headers.get("X-Request-Id")
    assert generated and generated != "robust-req-42"
    session = ray._private.worker._global_node.get_session_dir_path()

    def logged() -> bool:
        for path in glob.glob(os.path.join(session, "logs", "serve", "*robust*Ingress*")):
            with open(path, errors="replace") as log:
                if "request id robust-req-42" in log.read():
                    return True
        return False

    wait_for(logged, 30, "the ingress log line with our request id")


def test_a_path_with_cr_lf_is_one_escaped_access_log_line(url):
    import ray

    from tests.integration import raw_http

    # Sent byte for byte: %0D%0A decodes to CR LF in the path the ingress sees, which
    # written as is would start a forged line of its own.
    marker = "forged-line-0d0a"
    target = f"/{APP}/v1/models/slow%0D%0AGET%20/{marker}%20-%3E%20200:predict".encode()
    answer = raw_http.send(
        url,
        "POST",
        target,
        [(b"Authorization", f"Bearer {TOKEN}".encode()), (b"Content-Type", b"application/json")],
        b'{"instances": [1.0]}',
    )
    assert answer.status in (400, 404), answer.text
    session = ray._private.worker._global_node.get_session_dir_path()

    def lines() -> list[str]:
        found = []
        for path in glob.glob(os.path.join(session, "logs", "serve", "*robust*Ingress*")):
            with open(path, errors="replace") as log:
                found += [line for line in log if marker in line]
        return found

    found = wait_for(lines, 30, "the access log line of the forged path")
    escaped = "/v1/models/slow\\x0d\\x0aGET /forged-line-0d0a -> 200:predict -> 40"
    assert all(escaped in line for line in found), found  # no line of its own


# --- backpressure ---------------------------------------------------------------------------


def test_overloaded_model_answers_429_with_retry_after(url):
    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(lambda _: predict(url, "slow", [1.0], LONG), range(10)))
    codes = sorted(r.status_code for r in responses)
    assert set(codes) <= {200, 429}, codes
    assert 200 in codes and 429 in codes, codes
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["Retry-After"] == "2"
    assert "overloaded" in refused.json()["error"]
    assert_no_leak(refused)
    # Nothing was lost: every accepted request got its prediction.
    assert all(r.json() == {"predictions": [2.5]} for r in responses if r.status_code == 200)
    # The model keeps answering once the burst is over.
    assert predict(url, "slow", [3.0], LONG).json() == {"predictions": [3.5]}


# --- deadlines ------------------------------------------------------------------------------


def test_timed_out_request_gets_504_and_its_batch_mate_still_answers(url):
    with ThreadPoolExecutor(2) as pool:
        # Both wait in the same 2 s batch window; the one with the default 1 s deadline
        # times out, the other one (60 s) gets its answer from the batch.
        patient = pool.submit(predict, url, "batchy", [4.0], LONG)
        hasty = pool.submit(predict, url, "batchy", [8.0], AUTH)
        late, answered = hasty.result(), patient.result()
    assert late.status_code == 504, late.text
    assert "deadline" in late.json()["error"]
    assert_no_leak(late)
    assert answered.status_code == 200, answered.text
    assert answered.json() == {"predictions": [4.0]}
    # The header asks for a longer deadline; the model and its batches are fine afterwards.
    assert predict(url, "batchy", [2.0], LONG).json() == {"predictions": [3.0]}


def test_deadline_header_gives_504_in_the_v2_body(url):
    response = requests.post(
        f"{url}/v2/models/batchy/infer",
        json={"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
        headers={**AUTH, "X-Request-Timeout-Seconds": "0.5"},
        timeout=60,
    )
    assert response.status_code == 504
    assert "deadline" in response.json()["error"]


def test_bad_deadline_header_is_400(url):
    response = predict(url, "slow", [1.0], {**AUTH, "X-Request-Timeout-Seconds": "soon"})
    assert response.status_code == 400
    assert "X-Request-Timeout-Seconds" in response.json()["error"]


# --- limits and names -----------------------------------------------------------------------


def test_too_many_instances_is_413_naming_the_limit(url):
    response = predict(url, "slow", [1.0] * 5, LONG)
    assert response.status_code == 413
    assert "max_instances_per_request" in response.json()["error"]
    v2 = requests.post(
        f"{url}/v2/models/slow/infer",
        json={"inputs": [{"name": "x", "shape": [5], "datatype": "FP32", "data": [1.0] * 5}]},
        headers=LONG,
        timeout=60,
    )
    assert v2.status_code == 413 and "max_instances_per_request" in v2.json()["error"]
    assert predict(url, "slow", [1.0] * 4, LONG).status_code == 200


def test_body_over_the_size_limit_is_413(url):
    response = predict(url, "slow", [1.0] * 2000, LONG)
    assert response.status_code == 413
    assert "4096 bytes" in response.json()["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/..%2F..%2Fetc%2Fpasswd:predict",
        "/v1/models/../../etc/passwd:predict",
        "/v1/models/slow/labels/..%2Fx:predict",
        "/v2/models/..%2Fslow/infer",
        "/v2/models/SLOW/infer",
        "/v2/models/slow%00/infer",
    ],
)
def test_bad_model_names_are_refused_without_leaks(url, path):
    response = requests.post(f"{url}{path}", json={"instances": [1.0]}, headers=LONG, timeout=60)
    assert response.status_code in (400, 404), (response.status_code, response.text)
    assert "error" in response.json()
    assert_no_leak(response)


# --- the load test tool, briefly ------------------------------------------------------------


def test_load_test_tool_runs_against_the_fleet(fleet):
    import asyncio

    from bench.load_test import run

    report = asyncio.run(run(fleet["url"], ["digits", "minilm", "tiny-gpt2"], 3.0, 6, 300, 30.0))
    assert report["hung"] == 0 and report["errors_other_than_backpressure"] == 0, report
    for name in ("digits", "minilm", "tiny-gpt2"):
        assert report["models"][name]["ok"] > 0, report["models"][name]
        assert report["models"][name]["p99_ms"] is not None


# --- metrics --------------------------------------------------------------------------------


def test_metrics_per_model_reach_rays_prometheus_endpoint(url):
    import ray

    assert predict(url, "slow", [1.0], LONG).status_code == 200
    port = ray._private.worker._global_node.metrics_export_port
    wanted = (
        "ray_serve_app_requests_total{",
        'model="slow"',
        "ray_serve_app_request_latency_ms_bucket",
        "ray_serve_app_batch_rows_bucket",
        "ray_serve_app_load_seconds_bucket",
        "ray_serve_app_versions_loaded",
    )

    def exported() -> bool:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        return all(w in text for w in wanted)

    # Ray exports custom metrics every few seconds; the poll is generous.
    wait_for(exported, 90, "the serve_app metrics on Ray's metrics endpoint", every_s=2)
