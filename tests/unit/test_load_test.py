"""The load test's pure parts: percentiles, backpressure detection, the loopback guard."""

from __future__ import annotations

import json

import pytest

from bench import hostile, load_test
from bench.load_test import is_backpressure, percentile
from bench.loadgen import check_loopback


def test_percentile_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_only_explicit_overload_answers_count_as_backpressure():
    assert is_backpressure(503, '{"error": "model \'digits\' is overloaded: ..."}')
    assert is_backpressure(429, '{"error": {"message": "model is overloaded"}}')
    assert not is_backpressure(503, '{"error": "model \'x\' is not available"}')
    assert not is_backpressure(500, "overloaded")


def test_loopback_only():
    check_loopback("http://127.0.0.1:8000")
    check_loopback("http://localhost:8000")
    check_loopback("http://[::1]:8000")
    for url in ("http://10.0.0.1:8000", "http://example.com", "http://0.0.0.0:8000"):
        with pytest.raises(ValueError, match="non-loopback"):
            check_loopback(url)


# --- the mixed mode (--bad-fraction) ---------------------------------------------------------


def test_bad_turns_are_exactly_the_fraction_spread_evenly():
    from bench.load_test import is_bad_turn

    turns = [n for n in range(100) if is_bad_turn(n, 0.1)]
    assert turns == list(range(9, 100, 10))
    assert sum(is_bad_turn(n, 0.25) for n in range(1000)) == 250
    assert not any(is_bad_turn(n, 0.0) for n in range(100))


def test_the_catalogue_holds_every_class_of_issue_15():
    from bench.bad_requests import KINDS, catalogue

    bad = catalogue(max_request_bytes=1000, max_instances=8)
    assert {b.kind for b in bad} == set(KINDS)
    oversized = [b for b in bad if b.kind == "oversized"]
    assert all(len(b.body) > 1000 for b in oversized)
    too_many = next(b for b in bad if b.kind == "too_many_instances")
    assert len(json.loads(too_many.body)["instances"]) == 9
    # Non-ASCII stays percent-encoded in the path, sent as written.
    assert all(b.path.isascii() for b in bad)
    lengths = [b.headers.get("Inference-Header-Content-Length") for b in bad]
    assert "\u00b2" in lengths and "9" * 5000 in lengths


def test_answers_are_checked_against_the_reference():
    from bench.load_test import answer_problem

    digits = {"predictions": [[0.1, 0.9]]}
    assert answer_problem("digits", json.dumps(digits), digits) is None
    moved = json.dumps({"predictions": [[0.1 + 1e-6, 0.9]]})
    assert answer_problem("digits", moved, digits) is None  # batching moves the last bits
    wrong = json.dumps({"predictions": [[0.9, 0.1]]})
    assert "differ" in answer_problem("digits", wrong, digits)
    embedding = {"data": [{"embedding": [0.5] * 4}]}
    assert answer_problem("minilm", json.dumps(embedding), embedding) is None
    assert "differs" in answer_problem(
        "minilm", json.dumps({"data": [{"embedding": [0.5] * 3}]}), embedding
    )
    completion = {"choices": [{"text": "abc"}], "usage": {"completion_tokens": 3}}
    assert answer_problem("tiny-gpt2", json.dumps(completion), None) is None
    assert "malformed" in answer_problem("tiny-gpt2", '{"choices": []}', None)
    assert "malformed" in answer_problem("digits", "not json", digits)


def test_restarted_replicas_are_named():
    from bench.load_test import restarted

    before = {"digits": [["a", 1]], "minilm": [["b", 2]]}
    assert restarted(before, {"digits": [["a", 1]], "minilm": [["b", 2]]}) == []
    assert restarted(before, {"digits": [["a", 1]], "minilm": [["c", 3]]}) == ["minilm"]
    assert restarted(before, {"digits": [["a", 1]]}) == ["minilm"]


def test_mixed_result_json_and_verdict():
    from bench.load_test import MixedResult

    mixed = MixedResult(good_requests=10)
    mixed.bad("huge_int", 400, '{"error": "not valid JSON"}')
    mixed.bad("oversized", 413, "too large")
    replicas = {"before": {}, "after": {}, "restarted": []}
    report = mixed.to_json(0.1, replicas)
    assert report["good"] == {
        "requests": 10,
        "ok": 10,
        "failed": 0,
        "wrong_answers": 0,
        "failed_samples": [],
    }
    assert report["bad"]["requests"] == 2 and report["bad"]["not_4xx"] == 0
    assert report["bad"]["by_kind"]["oversized"]["codes"] == {"413": 1}
    assert mixed.passed(replicas, report)
    mixed.bad("bad_shape", 500, "internal error")
    mixed.answers_500 += 1
    report = mixed.to_json(0.1, replicas)
    assert report["bad"]["not_4xx"] == 1 and not mixed.passed(replicas, report)
    clean = MixedResult(good_requests=1)
    clean.bad("bad_header", "connection", "reset")
    assert not clean.passed(replicas, clean.to_json(0.1, replicas))  # no answer is not a 4xx
    assert not MixedResult().passed({**replicas, "restarted": ["digits"]}, report)


def test_bad_fraction_is_a_share_below_one():
    from bench.load_test import main

    for bad in ("1", "1.5", "-0.1"):
        with pytest.raises(SystemExit):
            main(["--bad-fraction", bad, "--url", "http://127.0.0.1:9"])


def test_deep_parameters_body_is_valid_json_500_lists_deep() -> None:
    body = json.loads(hostile.deep_parameters_body())
    depth, value = 0, body["parameters"]["deep"]
    while isinstance(value, list) and value:
        depth, value = depth + 1, value[0]
    assert depth + 1 == hostile.DEEP_PARAMETERS and value == []
    assert body["inputs"][0]["name"] == "pixels"


def _hostile_report(**changes: object) -> dict:
    report = {
        "kinds": {
            "stalled_uploads": {"codes": {"408": 16}},
            "oversized_grpc": {"codes": {"RESOURCE_EXHAUSTED": 50}},
            "deep_parameters": {"codes": {"400": 300}},
            "departed_clients": {"codes": {"left": 100}},
        },
        "broken_version": {
            "version": 3,
            "status": {
                "model_version_status": [
                    {"version": "3", "state": "END"},
                    {"version": "2", "state": "AVAILABLE"},
                ]
            },
        },
        "memory": [{"pid": 1, "name": "ray::Ingress", "growth_mib": 20.0}],
    }
    report.update(changes)
    return report


def test_a_hostile_run_passes_only_with_the_expected_answers() -> None:
    assert load_test.hostile_problems(_hostile_report()) == []
    kinds = _hostile_report()["kinds"]
    kinds["stalled_uploads"] = {"codes": {"408": 3, "hung": 1}}
    assert load_test.hostile_problems(_hostile_report(kinds=kinds)) == [
        "stalled_uploads: got {'hung': 1}, expected only ['408']"
    ]
    gone = {"version": 3, "status": {"model_version_status": [{"version": "3", "state": "END"}]}}
    assert (
        "no version AVAILABLE"
        in load_test.hostile_problems(_hostile_report(broken_version=gone))[0]
    )
    grown = [{"pid": 7, "name": "ray::Ingress", "growth_mib": 900.0}]
    assert load_test.hostile_problems(_hostile_report(memory=grown)) == [
        "ray::Ingress (pid 7) grew 900.0 MiB"
    ]
