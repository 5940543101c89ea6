"""Model pools: 50 Keras models on 2 shared replicas, loaded on demand, evicted LRU.

Model ``tenant-<i>`` answers ``sum(x) + i``, so every answer says which model gave it.
"""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from serve_app.pool_examples import build_pool, expected_output, model_name
from tests.gcs_emulator import gcs_emulator
from tests.helpers import wait_for
from tests.integration.conftest import deploy_and_wait, undeploy

pytestmark = pytest.mark.integration

APP = "pools"
MODELS = 50
MAX_PER_REPLICA = 8
REQUESTS = 240
CONCURRENCY = 8


def pool_args(uri: str, **overrides: Any) -> dict[str, Any]:
    pool = {
        "name": "tenants",
        "framework": "tensorflow",
        "uri": uri,
        "max_models_per_replica": MAX_PER_REPLICA,
        "num_replicas": 2,
        "resources": {"num_cpus": 0.25},
        "batching": {"max_batch_size": 16, "batch_wait_timeout_s": 0.002},
        "discovery_interval_s": 60,
        **overrides,
    }
    return {"pools": [pool]}


@pytest.fixture(scope="module")
def pool_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("model_pool")
    build_pool(root, MODELS)
    return root


@pytest.fixture(scope="module")
def pool_url(serve_url: str, pool_root: Path) -> Any:
    deploy_and_wait(APP, pool_args(str(pool_root)))
    yield f"{serve_url}/{APP}"
    undeploy(APP)


def predict(session: requests.Session, base: str, index: int, row: list[float]) -> float:
    response = session.post(
        f"{base}/v1/models/{model_name(index)}:predict", json={"instances": [row]}, timeout=120
    )
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0][0]


def test_random_traffic_gets_each_models_own_answer_and_evicts(pool_url: str) -> None:
    rng = random.Random(7)
    picks = [
        (rng.randrange(MODELS), [rng.uniform(-1, 1) for _ in range(4)]) for _ in range(REQUESTS)
    ]
    local = threading.local()

    def call(pick: tuple[int, list[float]]) -> tuple[int, list[float], float]:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        index, row = pick
        return index, row, predict(local.session, pool_url, index, row)

    with ThreadPoolExecutor(CONCURRENCY) as workers:
        answers = list(workers.map(call, picks))
    for index, row, answer in answers:
        assert answer == pytest.approx(expected_output(index, row), abs=1e-4), index

    reports = pool_reports(pool_url, sorted({index for index, _ in picks}))
    assert len(reports) == 2, "both replicas of the pool should hold models"
    for report in reports.values():
        assert len(report["models_loaded"]) + len(report["models_loading"]) <= MAX_PER_REPLICA
        assert report["loads"] > MAX_PER_REPLICA
    assert sum(r["evictions"] for r in reports.values()) > 0
    assert sum(r["misses"] for r in reports.values()) > 0
    assert sum(r["hits"] for r in reports.values()) > 0


def pool_reports(base: str, indexes: list[int]) -> dict[str, dict[str, Any]]:
    """The latest pool report of each replica, read through models' stats."""
    reports: dict[str, dict[str, Any]] = {}
    with requests.Session() as session:
        for index in indexes:
            stats = session.get(f"{base}/v2/models/{model_name(index)}/stats", timeout=120)
            assert stats.status_code == 200, stats.text
            body = stats.json()
            replica = body["replica"]["id"]
            previous = reports.get(replica)
            if previous is None or body["pool"]["loads"] >= previous["loads"]:
                reports[replica] = body["pool"]
    return reports


def test_a_pool_model_answers_every_protocol(pool_url: str) -> None:
    name = model_name(3)
    status = requests.get(f"{pool_url}/v1/models/{name}", timeout=60)
    assert status.status_code == 200, status.text
    assert status.json()["model_version_status"][0]["state"] == "AVAILABLE"
    metadata = requests.get(f"{pool_url}/v1/models/{name}/metadata", timeout=60).json()
    assert metadata["model_spec"]["name"] == name
    assert (
        "x" in metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
    )

    v2_meta = requests.get(f"{pool_url}/v2/models/{name}", timeout=60).json()
    assert v2_meta["name"] == name and v2_meta["inputs"][0]["name"] == "x"
    assert requests.get(f"{pool_url}/v2/models/{name}/ready", timeout=60).status_code == 200
    infer = requests.post(
        f"{pool_url}/v2/models/{name}/infer",
        json={"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1] * 8}]},
        timeout=60,
    )
    assert infer.status_code == 200, infer.text
    assert infer.json()["outputs"][0]["data"] == [7.0, 7.0]

    import numpy as np
    import tritonclient.http as triton

    client = triton.InferenceServerClient(pool_url.removeprefix("http://"))
    try:
        tensor = triton.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.full((1, 4), 0.5, dtype=np.float32))
        result = client.infer(model_name(4), [tensor])
        assert result.as_numpy("y").tolist() == [[6.0]]
    finally:
        client.close()


def test_unknown_names_are_404_and_new_models_are_served_without_a_redeploy(
    pool_url: str, pool_root: Path
) -> None:
    new = model_name(MODELS)
    missing = requests.post(
        f"{pool_url}/v1/models/{new}:predict", json={"instances": [[0, 0, 0, 0]]}, timeout=60
    )
    assert missing.status_code == 404
    assert f"model '{new}' not found" in missing.json()["error"]

    build_pool(pool_root, 1, start=MODELS)  # copied into the pool's uri while it serves
    # A miss re-lists the pool at most once a second: the next second's requests find it.
    answer = wait_for(
        lambda: requests.post(
            f"{pool_url}/v1/models/{new}:predict", json={"instances": [[1, 1, 1, 1]]}, timeout=120
        ).json()["predictions"],
        10,
        f"{new} to be served",
        every_s=0.3,
    )
    assert answer == [[pytest.approx(54.0)]]


def test_loads_of_different_models_do_not_wait_for_each_other(
    serve_url: str, tmp_path: Path
) -> None:
    """A model whose download is held at the GCS proxy is still loading while another
    cold model of the same replica loads and answers."""
    staging = tmp_path / "staging"
    build_pool(staging, 2)
    with gcs_emulator(tmp_path / "emulator") as (emulator, proxy):
        emulator.create_bucket("pool")
        for index in range(2):
            name = model_name(index)
            emulator.upload_dir("pool", f"tenants/{name}", staging / name)
        args = pool_args("gs://pool/tenants", num_replicas=1)
        args["store"] = {"cache_dir": str(tmp_path / "cache"), "retry_timeout_s": 30}
        env = {"env_vars": {"STORAGE_EMULATOR_HOST": proxy.url}}
        app = "pool-loads"
        deploy_and_wait(app, args, runtime_env=env)
        base = f"{serve_url}/{app}"
        proxy.hold_downloads(name_contains=model_name(0))
        slow: dict[str, float] = {}

        def held_request() -> None:
            with requests.Session() as session:
                slow["answer"] = predict(session, base, 0, [1, 2, 3, 4])

        waiter = threading.Thread(target=held_request)
        waiter.start()
        try:
            wait_for(lambda: proxy.in_flight > 0, 60, "the held download of tenant-0")
            with requests.Session() as session:
                assert predict(session, base, 1, [1, 2, 3, 4]) == pytest.approx(11.0)
            assert "answer" not in slow, "tenant-0 answered while its download was held"
        finally:
            proxy.release_downloads()
            waiter.join(120)
        assert slow["answer"] == pytest.approx(10.0)
        undeploy(app)  # before the emulator stops
