"""Coalescing: concurrent requests for a model reach its replica in few calls, and answer apart.

The fleet's ``minilm`` batches up to 16 rows and waits up to 50 ms for a batch to fill, so
while a call runs, the next requests queue in the ingress and leave together.
"""

from __future__ import annotations

import requests

from tests.helpers import post_many

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
