"""Operating models live: canary splits and rollback, scale to zero, resource-preserving swaps.

Each model here is its own application (``build_model``, no route prefix); the shared
fleet's ingress at ``/`` finds it and serves it, as it would in the default layout.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
from ray import serve

from serve_app.examples import digits_sample
from tests.helpers import post_many, wait_for
from tests.integration.conftest import QUICK_SCALE_TO_ZERO, deploy_apps, model_app, undeploy

ROW = digits_sample(1)[0]


def _v2(url: str, model: str) -> requests.Response:
    body = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": ROW}]}
    return requests.post(f"{url}/v2/models/{model}/infer", json=body, timeout=120)


def _replicas(app: str) -> list[dict[str, Any]]:
    details = serve.context._get_global_client().get_serve_details()
    deployment = details["applications"].get(app, {}).get("deployments", {}).get(app, {})
    return [
        r
        for r in deployment.get("replicas", [])
        if getattr(r["state"], "value", r["state"]) == "RUNNING"
    ]


def _stats(url: str, model: str) -> dict[str, Any]:
    return requests.get(f"{url}/v2/models/{model}/stats", timeout=120).json()


@pytest.fixture
def cleanup():
    names: list[str] = []
    yield names
    for name in names:
        with contextlib.suppress(Exception):
            undeploy(name)


def test_a_canary_split_moves_in_place_and_rolls_back(
    fleet: dict, model_repo: Path, cleanup: list[str]
) -> None:
    url, name = fleet["url"], "canary"
    cleanup.append(name)
    args = {
        "uri": str(model_repo / "digits"),
        "version_policy": {"specific": [1, 2]},
        "traffic": {1: 90, 2: 10},
        "resources": {"num_cpus": 0.1},
    }
    deploy_apps([model_app(name, args)])
    wait_for(lambda: _v2(url, name).status_code == 200, 240, "the canary model to answer")
    pid = _replicas(name)[0]["pid"]

    bodies = [
        {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": ROW}]}
    ] * 400
    answers = post_many(f"{url}/v2/models/{name}/infer", bodies, concurrency=8)
    versions = Counter(a.json()["model_version"] for a in answers)
    # Binomial(400, 0.1): 40 expected for version 2, standard deviation 6. Five of them
    # either way (10..70) fails a correct split about once in 3 million runs.
    assert versions["1"] + versions["2"] == 400, versions
    assert 10 <= versions["2"] <= 70, versions
    report = _stats(url, name)["version_traffic"]
    assert report["2"]["traffic_weight"] == 10 and report["2"]["requests"] >= versions["2"]
    assert report["1"]["requests"] >= versions["1"] and report["1"]["p50_ms"] is not None

    # Roll back at once: the weights travel as user_config, applied without a restart.
    deploy_apps([model_app(name, args, user_config={"traffic": {1: 100, 2: 0}})])

    def rolled_back() -> bool:
        answers = post_many(f"{url}/v2/models/{name}/infer", bodies[:60], concurrency=8)
        return {a.json()["model_version"] for a in answers} == {"1"}

    wait_for(rolled_back, 120, "every request to go to version 1")
    assert [r["pid"] for r in _replicas(name)] == [pid]


def test_a_model_scaled_to_zero_answers_its_next_request(
    fleet: dict, model_repo: Path, cleanup: list[str]
) -> None:
    name = "sleepy"
    # An ingress of its own: the shared fleet holds a broken model, so it is never ready.
    url = f"{fleet['url']}/zero"
    cleanup.extend([name, "zero"])
    args = {
        "uri": str(model_repo / "digits"),
        "resources": {"num_cpus": 0.1},
        "autoscaling": QUICK_SCALE_TO_ZERO,
    }
    ingress = {
        "name": "zero",
        "route_prefix": "/zero",
        "import_path": "serve_app.app:build_ingress",
        "args": {},
    }
    deploy_apps([ingress, model_app(name, args)])
    wait_for(lambda: _v2(url, name).status_code == 200, 240, "the model to answer")
    assert requests.get(f"{url}/v2/health/ready", timeout=60).status_code == 200
    wait_for(lambda: not _replicas(name), 180, "the idle model to go to zero replicas")
    # At zero it is still ready: it can answer, after a cold start.
    ready = requests.get(f"{url}/v2/health/ready", timeout=60)
    assert ready.status_code == 200, ready.text
    started = time.monotonic()
    answer = _v2(url, name)
    cold_start_s = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] == "2"
    assert len(_replicas(name)) == 1
    print(f"cold start from zero replicas: {cold_start_s:.1f} s")


def _serve_resource_swapping(
    url: str, name: str, model_repo: Path, tmp_path: Path
) -> tuple[Path, int]:
    """digits version 1 as model ``name`` with ``swap_policy: resource``, its repository
    polled every second; (that repository, the replica's pid) once it answers."""
    repo = tmp_path / name
    shutil.copytree(model_repo / "digits" / "1", repo / "1")
    args = {
        "uri": str(repo),
        "swap_policy": "resource",
        "poll_interval_s": 1,
        "resources": {"num_cpus": 0.1},
    }
    deploy_apps([model_app(name, args)])
    wait_for(lambda: _v2(url, name).status_code == 200, 240, "the model to answer")
    return repo, _replicas(name)[0]["pid"]


def test_a_resource_preserving_swap_frees_the_old_version_first_and_drops_nothing(
    fleet: dict, model_repo: Path, tmp_path: Path, cleanup: list[str]
) -> None:
    url, name = fleet["url"], "swapper"
    cleanup.append(name)
    repo, pid = _serve_resource_swapping(url, name, model_repo, tmp_path)

    failures: list[str] = []
    seen: set[str] = set()
    stop = threading.Event()

    def call() -> None:
        while not stop.is_set():
            answer = _v2(url, name)
            if answer.status_code != 200:
                failures.append(f"{answer.status_code} {answer.text}")
            else:
                seen.add(answer.json()["model_version"])

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    try:
        shutil.copytree(model_repo / "digits" / "2", repo / "2")
        wait_for(lambda: "2" in seen, 240, "version 2 to answer")
    finally:
        stop.set()
        caller.join(timeout=120)
    swaps = _stats(url, name)["swaps"]
    assert swaps and swaps[-1]["unloaded"] == [1] and swaps[-1]["loaded"] == [2], swaps
    statuses = requests.get(f"{url}/v1/models/{name}", timeout=60).json()
    states = {s["version"]: s["state"] for s in statuses["model_version_status"]}
    assert states["2"] == "AVAILABLE" and states.get("1", "END") == "END", states
    assert failures == [], failures[:3]
    assert [r["pid"] for r in _replicas(name)] == [pid]


def test_a_resource_swap_to_a_broken_version_brings_the_old_version_back(
    fleet: dict, model_repo: Path, tmp_path: Path, cleanup: list[str]
) -> None:
    """Under ``swap_policy: resource`` a broken new version (a ``model.keras`` that is not
    one) is tried after the old version is unloaded; the old version comes back, answers
    after the gap (requests in the gap wait), the replica keeps its process, and the status
    shows the broken version with its reason (issue 25, item 9)."""
    url, name = fleet["url"], "swapback"
    cleanup.append(name)
    repo, pid = _serve_resource_swapping(url, name, model_repo, tmp_path)

    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def call() -> None:
        while not stop.is_set():
            answer = _v2(url, name)
            ok = answer.status_code == 200
            answers.append(
                (answer.status_code, answer.json()["model_version"] if ok else answer.text)
            )

    def v2_failed() -> bool:
        body = requests.get(f"{url}/v1/models/{name}", timeout=60).json()
        states = {s["version"]: s for s in body.get("model_version_status", [])}
        return states.get("2", {}).get("status", {}).get("error_code") == "UNKNOWN"

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    try:
        staging = tmp_path / ".2"
        staging.mkdir()
        (staging / "model.keras").write_bytes(b"not a keras file")
        staging.rename(repo / "2")
        wait_for(v2_failed, 240, "version 2 to fail to load")
        after = len(answers)
        wait_for(lambda: len(answers) > after + 20, 240, "answers after the failed swap")
    finally:
        stop.set()
        caller.join(timeout=120)
    failures = [a for a in answers if a[0] != 200]
    assert failures == [], failures[:3]
    assert {version for _, version in answers} == {"1"}

    def settled() -> dict[str, Any] | None:  # not in the gap of a retry of version 2
        body = requests.get(f"{url}/v1/models/{name}", timeout=60).json()
        states = {s["version"]: s for s in body["model_version_status"]}
        serving = states["1"]["state"] == "AVAILABLE" and states["2"]["state"] == "END"
        return states if serving else None

    states = wait_for(settled, 120, "version 1 serving between retries of version 2")
    assert "version 2" in states["2"]["status"]["error_message"], states
    assert "failed to load" in states["2"]["status"]["error_message"], states
    swaps = _stats(url, name)["swaps"]
    assert all(s["unloaded"] == [1] and s["failed"] == [2] for s in swaps), swaps
    assert [r["pid"] for r in _replicas(name)] == [pid]


def test_a_model_that_cannot_be_placed_answers_503_with_the_reason(
    fleet: dict, model_repo: Path, cleanup: list[str]
) -> None:
    """A model asking for more than the cluster has never comes up: its requests get 503 with
    what it asked for and what the cluster has, not a hang; the other models answer."""
    url, name = fleet["url"], "too-big"
    cleanup.append(name)
    deploy_apps(
        [model_app(name, {"uri": str(model_repo / "digits"), "resources": {"num_cpus": 512}})]
    )

    def refused() -> str | None:
        answer = _v2(url, name)
        return answer.json()["error"] if answer.status_code == 503 else None

    # Serve says why replicas are not scheduled once they have waited 30 s.
    reason = wait_for(refused, 240, "the unplaceable model to answer 503")
    assert f"model '{name}' cannot be placed" in reason, reason
    assert 'each replica asks for {"CPU": 512.0}' in reason, reason
    assert _v2(url, "digits").status_code == 200
