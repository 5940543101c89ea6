"""Coalescing: concurrent requests for a model reach its replica in few calls, and answer apart.

The fleet's ``minilm`` batches up to 16 rows and waits up to 50 ms for a batch to fill, so
while a call runs, the next requests queue in the ingress and leave together.

An application of its own (``apart``) serves a Python model that writes down each model call
(``tests/user_models/call_log.py``): a call that one request breaks is retried in halves, in
the replica (a model call) and in the ingress (a handle call), and only that request fails.
Its default deadline (``ingress.request_timeout_s``) is shorter than the margin the ingress
keeps for its 504, so a request without a deadline header has none left when it arrives;
the others ask for 120 s.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from tests.helpers import post_many, wait_for
from tests.integration.conftest import deploy_and_wait, undeploy
from tests.user_models.call_log import BREAKS_THE_CALL, BREAKS_THE_MODEL, HOLD
from tests.user_models.scorer import write_version

APART = "apart"
PATIENT = {"X-Request-Timeout-Seconds": "120"}

SENTENCES = [f"sentence number {i} about serving many models" for i in range(40)]


def _stats(url: str) -> dict:
    answer = requests.get(f"{url}/v2/models/minilm/stats", timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()["coalescing"]


def _v2(text: str) -> dict:
    return {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}


def _embedding(response: requests.Response) -> list[float]:
    return response.json()["outputs"][0]["data"]


def test_concurrent_requests_reach_the_replica_in_fewer_calls_and_bad_ones_fail_alone(
    fleet: dict,
) -> None:
    url = f"{fleet['url']}/v2/models/minilm/infer"
    alone = requests.post(url, json=_v2(SENTENCES[0]), timeout=60)
    assert alone.status_code == 200, alone.text
    before = _stats(fleet["url"])

    bodies = [_v2(text) for text in SENTENCES]
    # A lone surrogate passes JSON decoding; the tokenizer would fail its whole batch on it.
    bodies[7] = _v2("\ud800 broken")
    bodies[21] = _v2("fine \udfff")
    responses = post_many(url, bodies, concurrency=len(bodies))

    after = _stats(fleet["url"])
    requests_seen = after["requests"] - before["requests"]
    calls = after["calls"] - before["calls"]
    assert requests_seen == len(bodies), (before, after)
    assert calls < requests_seen, f"{requests_seen} requests in {calls} calls: none coalesced"

    for index in (7, 21):
        assert responses[index].status_code == 400, responses[index].text
        message = responses[index].json()["error"]
        assert "input 'text'[0] is not valid Unicode" in message, message
    good = [r for i, r in enumerate(responses) if i not in (7, 21)]
    assert [r.status_code for r in good] == [200] * len(good)
    # Each answer is its own request's: the first sentence's embedding equals its lone answer.
    first = _embedding(responses[0])
    assert max(abs(a - b) for a, b in zip(first, _embedding(alone))) < 1e-4
    assert _embedding(responses[1]) != first


# --- one request that breaks a call, in the replica and in the ingress ------------------------


@pytest.fixture(scope="module")
def apart(serve_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("apart")
    write_version(root / "call-log", 1, 1.0)
    files = {"log": root / "calls.log", "release": root / "release"}
    model = {
        "name": "call-log",
        "framework": "python",
        "python": {
            "class": "tests.user_models.call_log:CallLog",
            "options": {name: str(path) for name, path in files.items()},
        },
        "uri": str(root / "call-log"),
        # No wait for a batch to fill: what queues while the model is busy is one batch.
        "batching": {"max_batch_size": 32, "batch_wait_timeout_s": 0.0},
        "resources": {"num_cpus": 0.25},
    }
    ingress = {"num_cpus": 0.25, "request_timeout_s": 0.02}
    deploy_and_wait(APART, {"models": [model], "ingress": ingress})
    yield {"url": f"{serve_url}/{APART}", **files}
    undeploy(APART)


def _row(first: float) -> dict[str, Any]:
    return {"instances": [[first, 0, 0, 0]]}


def _all_at_once(apart: dict[str, Any], bodies: list[dict[str, Any]]) -> list[requests.Response]:
    """Send ``bodies`` while two requests hold the model busy (both of the ingress's calls
    in flight), so that they wait in the ingress and reach the replica in one call and one
    batch; the model is let go once they all wait."""
    url = f"{apart['url']}/v1/models/call-log:predict"
    stats = f"{apart['url']}/v2/models/call-log/stats"
    apart["release"].unlink(missing_ok=True)

    def post(body: dict[str, Any]) -> requests.Response:
        return requests.post(url, json=body, headers=PATIENT, timeout=120)

    with ThreadPoolExecutor(2 + len(bodies)) as pool:
        holders = [pool.submit(post, _row(HOLD)) for _ in range(2)]
        wait_for(
            lambda: _get(stats)["coalescing"]["ongoing"] >= 2,
            60,
            "both holding requests to reach the replica",
            every_s=0.05,
        )
        answers = [pool.submit(post, body) for body in bodies]
        time.sleep(2)  # they reach the ingress and queue there (no answer can come before)
        apart["release"].touch()
        assert [h.result().status_code for h in holders] == [200, 200]
        return [a.result() for a in answers]


def _get(url: str) -> Any:
    answer = requests.get(url, headers=PATIENT, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _calls(apart: dict[str, Any]) -> list[list[float]]:
    """Every model call so far: the first number of each of its rows."""
    lines = apart["log"].read_text().splitlines() if apart["log"].exists() else []
    return [[float(v) for v in line.split(",")] for line in lines]


def test_a_model_call_broken_by_one_row_is_retried_in_halves_not_row_by_row(
    apart: dict[str, Any],
) -> None:
    firsts = [float(i) for i in range(16)]
    firsts[9] = BREAKS_THE_MODEL
    before = len(_calls(apart))
    answers = _all_at_once(apart, [_row(v) for v in firsts])

    bad = answers[9]
    assert bad.status_code == 500, bad.text
    assert "RuntimeError" in bad.json()["error"] and "666" in bad.json()["error"]
    for first, answer in zip(firsts, answers):
        if first != BREAKS_THE_MODEL:
            assert answer.status_code == 200, answer.text
            assert answer.json()["predictions"][0]["y"] == [2 * first, 0, 0, 0]

    calls = [c for c in _calls(apart)[before:] if HOLD not in c]
    failed = next(i for i, c in enumerate(calls) if BREAKS_THE_MODEL in c)
    rows = len(calls[failed])
    assert rows >= 8, f"the requests did not wait together: {calls}"
    # Halves of the failed call, halved again where one fails, down to the bad row: about
    # 2 log2(n) retries where one per row would be n.
    retries = calls[failed + 1 :]
    assert len(retries[0]) == rows // 2, calls
    assert len(retries) <= 2 * math.ceil(math.log2(rows)), calls
    assert [BREAKS_THE_MODEL] in retries


def test_a_handle_call_broken_by_one_request_is_retried_apart_and_only_it_fails(
    apart: dict[str, Any],
) -> None:
    firsts = [float(i) for i in range(16)]
    firsts[5] = BREAKS_THE_CALL  # its answer cannot be pickled: the whole handle call fails
    answers = _all_at_once(apart, [_row(v) for v in firsts])

    bad = answers[5]
    assert bad.status_code == 500, bad.text
    assert "error" in bad.json()
    for first, answer in zip(firsts, answers):
        if first != BREAKS_THE_CALL:
            assert answer.status_code == 200, answer.text
            assert answer.json()["predictions"][0]["y"] == [2 * first, 0, 0, 0]
    # The replica keeps serving.
    alone = requests.post(
        f"{apart['url']}/v1/models/call-log:predict", json=_row(3.0), headers=PATIENT, timeout=60
    )
    assert alone.status_code == 200, alone.text


V2_ROW = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 0, 0, 0]}]}


@pytest.mark.parametrize(
    ("path", "valid"),
    [("/v2/models/call-log/infer", V2_ROW), ("/v1/models/call-log:predict", _row(1.0))],
)
def test_a_request_past_its_deadline_is_504_before_its_body_is_decoded(
    apart: dict[str, Any], path: str, valid: dict[str, Any]
) -> None:
    # No deadline header: the application's default deadline has passed on arrival. A body
    # that is not even JSON is still answered 504: a request that nobody waits for is not
    # decoded; a valid one is not queued either (the model never sees it).
    before = len(_calls(apart))
    for body in (b'{"inputs": [not json', json.dumps(valid).encode()):
        answer = requests.post(
            f"{apart['url']}{path}",
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=60,
        )
        assert answer.status_code == 504, answer.text
        assert "deadline" in answer.json()["error"], answer.text
    assert len(_calls(apart)) == before


def test_each_generation_gets_a_handle_call_of_its_own(fleet: dict) -> None:
    """A coalesced call is cancelled only when all its requests are gone, so a client that
    left a shared call kept its rows generating. Generations go one per handle call, and a
    departed client's call is cancelled (the replica stops generating for it at the next
    token); the replica still batches the rows of concurrent generations together."""

    def coalescing() -> dict:
        answer = requests.get(f"{fleet['url']}/v2/models/tiny-gpt2/stats", timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()["coalescing"]

    before = coalescing()
    bodies = [
        {"model": "tiny-gpt2", "prompt": f"Story number {i}", "max_tokens": 24, "temperature": 0}
        for i in range(12)
    ]
    responses = post_many(f"{fleet['url']}/v1/completions", bodies, concurrency=len(bodies))
    assert [r.status_code for r in responses] == [200] * len(bodies), [r.text for r in responses]
    after = coalescing()
    assert after["requests"] - before["requests"] == len(bodies), (before, after)
    assert after["calls"] - before["calls"] == len(bodies), (before, after)
