"""On `make run`'s fast path (HAProxy, direct ingress, gRPC between replicas): every size the
limits admit works in both directions, and concurrent requests are coalesced."""

from __future__ import annotations

import requests

from tests.e2e.conftest import BASE_URL
from tests.helpers import post_many


def test_a_text_of_6_megabytes_is_answered(served_fleet: None) -> None:
    """Larger than gRPC's default 4 MiB message, within the 32 MiB body limit."""
    text = "serving many models " * 300_000  # 6 MB
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}
    answer = requests.post(f"{BASE_URL}/v2/models/minilm/infer", json=body, timeout=300)
    assert answer.status_code == 200, answer.text[:500]
    assert answer.json()["outputs"][0]["shape"] == [1, 384]


def test_3000_sentences_in_one_request_are_answered(served_fleet: None) -> None:
    """The answer, 3,000 embeddings (about 4.6 MB of float32), is larger than 4 MiB."""
    sentences = [f"sentence {i}" for i in range(3000)]
    body = {"inputs": [{"name": "text", "shape": [3000], "datatype": "BYTES", "data": sentences}]}
    answer = requests.post(f"{BASE_URL}/v2/models/minilm/infer", json=body, timeout=600)
    assert answer.status_code == 200, answer.text[:500]
    assert answer.json()["outputs"][0]["shape"] == [3000, 384]


def test_concurrent_requests_are_coalesced_on_the_fast_path(served_fleet: None) -> None:
    def stats() -> dict:
        return requests.get(f"{BASE_URL}/v2/models/minilm/stats", timeout=30).json()["coalescing"]

    before = stats()
    bodies = [{"instances": [f"sentence number {i}"]} for i in range(64)]
    responses = post_many(f"{BASE_URL}/v1/models/minilm:predict", bodies, concurrency=64)
    after = stats()
    assert [r.status_code for r in responses] == [200] * 64
    assert after["requests"] - before["requests"] == 64
    assert after["calls"] - before["calls"] < 64
