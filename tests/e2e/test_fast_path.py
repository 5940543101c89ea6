"""On `make run`'s fast path (HAProxy, direct ingress, gRPC between replicas): every size the
limits admit works in both directions, and concurrent requests are coalesced."""

from __future__ import annotations

import time

import requests
import yaml

from tests.e2e.conftest import BASE_URL, ROOT
from tests.helpers import post_many

MODEL_REPLICAS = {
    app["name"]: app["args"].get("num_replicas", 1)
    for app in yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"]
    if app["name"] != "ingress"
}


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


def coalescing_by_replica(model: str) -> dict[str, dict]:
    """Each replica's coalescing counters; stats are answered by one replica per request.

    Asks until every replica has answered: the fleet answers once one replica of each model
    runs, the others may still be loading.
    """
    replicas = MODEL_REPLICAS[model]
    seen: dict[str, dict] = {}
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        stats = requests.get(f"{BASE_URL}/v2/models/{model}/stats", timeout=30).json()
        seen[stats["replica"]["id"]] = stats["coalescing"]
        if len(seen) == replicas:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"only {len(seen)} of {replicas} '{model}' replicas answered")


def test_concurrent_requests_are_coalesced_on_the_fast_path(served_fleet: None) -> None:
    before = coalescing_by_replica("minilm")
    bodies = [{"instances": [f"sentence number {i}"]} for i in range(64)]
    responses = post_many(f"{BASE_URL}/v1/models/minilm:predict", bodies, concurrency=64)
    after = coalescing_by_replica("minilm")
    assert [r.status_code for r in responses] == [200] * 64
    assert set(after) == set(before), "a minilm replica was replaced"
    requests_sent = sum(after[r]["requests"] - before[r]["requests"] for r in after)
    calls_made = sum(after[r]["calls"] - before[r]["calls"] for r in after)
    assert requests_sent == 64
    assert calls_made < 64
