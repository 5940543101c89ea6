"""`serve deploy serve_config.yaml` to a running multi-node cluster, and where models land.

The tests run in order against one cluster (see conftest.py) and one HTTP port:

1. `serve deploy` of the default fleet's config (one application per model, beside the
   ingress application), with `tiny-gpt2` on two 0.5-GPU replicas
   (CPU fallback allowed: the GPUs are declared, not real) and `digits` kept on the CPU pool.
   Every replica reports where it runs in `/v2/models/{name}/stats` (`placement`).
2. `serve status` through the dashboard shows the fleet.
3. A second `serve deploy` that changes one model's settings updates only that model.
4. A GPU model without CPU fallback, where no framework sees a GPU, fails to load with a
   message that says so, the ingress answers 503 with it, and the other applications keep
   serving.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.cluster.cluster import LocalCluster
from tests.cluster.conftest import CPU_POOL, ROOT
from tests.helpers import free_port, wait_for

DEPLOY_TIMEOUT_S = 420
DIGIT = [0.0] * 64
FLEET = ("ingress", "digits", "tiny-gpt2")  # the applications deployed, one per model
INGRESS_ACTOR = "ServeReplica:ingress:Ingress"  # Serve names replica actors app:deployment


@pytest.fixture(scope="module")
def http_port() -> int:
    return free_port()


def fleet_config(http_port: int) -> dict[str, Any]:
    """serve_config.yaml as written, placed for this cluster.

    One proxy, on the head (all nodes share this machine's ports), on free ports; minilm's
    application left out to keep the test light; `tiny-gpt2` on two half GPUs of an L4 node
    in bfloat16; `digits` on the CPU node pool.
    """
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["proxy_location"] = "HeadOnly"
    config["http_options"] = {"host": "127.0.0.1", "port": http_port}
    config["grpc_options"]["port"] = free_port()
    apps = {app["name"]: app for app in config["applications"]}
    ingress, digits, gpt2 = apps["ingress"], apps["digits"], apps["tiny-gpt2"]
    digits["args"]["resources"] = {"num_cpus": 0.1, "label_selector": dict(CPU_POOL)}
    gpt2["args"]["resources"] = {
        "num_cpus": 0.1,
        "num_gpus": 0.5,
        "accelerator_type": "L4",
        "allow_cpu_fallback": True,
    }
    gpt2["args"]["num_replicas"] = 2
    gpt2["args"]["dtype"] = "bfloat16"
    for app, deployment in ((ingress, "Ingress"), (digits, "digits"), (gpt2, "tiny-gpt2")):
        app["deployments"] = patient_health_checks(deployment)
    config["applications"] = [ingress, digits, gpt2]
    return config


def patient_health_checks(*deployments: str) -> list[dict[str, Any]]:
    """Serve's per-deployment overrides: health checks that outwait a starved CPU.

    Other test runs share this machine's 2 cores; with Serve's 30 s default a starved replica
    can miss a health check and be restarted, which is not what these tests are about.
    """
    return [
        {"name": name, "health_check_period_s": 30, "health_check_timeout_s": 300}
        for name in deployments
    ]


def deploy(cluster: LocalCluster, config: dict[str, Any], name: str) -> None:
    path = cluster.cwd / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    cluster.serve_deploy(path)


def wait_for_app(cluster: LocalCluster, app: str, expect: str) -> dict[str, Any]:
    """Poll `serve status` until ``app`` reaches ``expect``; a terminal other state fails."""

    def settled() -> dict[str, Any] | None:
        status = cluster.serve_status()["applications"].get(app)
        if status is None:
            return None
        terminal = {"RUNNING", "DEPLOY_FAILED"} - {expect}
        if status["status"] in terminal and not _updating(status):
            raise AssertionError(f"application '{app}' is {status['status']}:\n{status}")
        return status if status["status"] == expect else None

    return wait_for(settled, DEPLOY_TIMEOUT_S, f"application '{app}' to be {expect}", every_s=2)


def _updating(status: dict[str, Any]) -> bool:
    return any(d["status"] == "UPDATING" for d in status.get("deployments", {}).values())


def replica_stats(url: str, model: str, replicas: int) -> dict[str, dict[str, Any]]:
    """Each replica's `model_stats`, by replica id: ask until ``replicas`` have answered."""
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(200):  # requests are routed at random; 200 tries miss one of 2 never
        response = requests.get(f"{url}/v2/models/{model}/stats", timeout=30)
        assert response.status_code == 200, response.text
        stats = response.json()
        seen[stats["replica"]["id"]] = stats
        if len(seen) == replicas:
            return seen
    raise AssertionError(f"only {len(seen)} of {replicas} '{model}' replicas answered")


@pytest.fixture(scope="module")
def deployed(cluster: LocalCluster, http_port: int) -> dict[str, Any]:
    """The fleet, deployed with `serve deploy` through the dashboard address."""
    config = fleet_config(http_port)
    deploy(cluster, config, "fleet")
    for app in FLEET:
        wait_for_app(cluster, app, "RUNNING")
    nodes = cluster.list_nodes()
    return {
        "config": config,
        "url": f"http://127.0.0.1:{http_port}",
        "node_pool": {n["node_id"]: n["labels"].get("node-pool", "head") for n in nodes},
        "node_gpus": {n["node_id"]: n["resources_total"].get("GPU", 0) for n in nodes},
    }


def test_gpu_replicas_share_one_gpu_of_the_gpu_node(deployed: dict[str, Any]) -> None:
    replicas = replica_stats(deployed["url"], "tiny-gpt2", 2)
    placements = [stats["placement"] for stats in replicas.values()]
    for placement in placements:
        assert deployed["node_pool"][placement["node_id"]] == "gpu"
        assert deployed["node_gpus"][placement["node_id"]] == 2
        assert placement["assigned_resources"]["GPU"] == 0.5
        assert "accelerator_type:L4" in placement["assigned_resources"]
        assert placement["CUDA_VISIBLE_DEVICES"] in ("0", "1")
        assert placement["gpu_ids"] == [placement["CUDA_VISIBLE_DEVICES"]]
        # Declared GPUs only: torch sees none, so the replica fell back, in its dtype.
        assert placement["device"] == "cpu"
        assert "torch" in placement["cpu_fallback"]
        assert placement["dtype"] == "bfloat16"
    # Two GPUs on the node, yet both half-GPU replicas were packed onto the same one.
    first, second = placements
    assert first["CUDA_VISIBLE_DEVICES"] == second["CUDA_VISIBLE_DEVICES"]
    assert len({stats["replica"]["pid"] for stats in replicas.values()}) == 2


def test_cpu_model_lands_on_the_cpu_pool_without_a_gpu(deployed: dict[str, Any]) -> None:
    (stats,) = replica_stats(deployed["url"], "digits", 1).values()
    placement = stats["placement"]
    assert deployed["node_pool"][placement["node_id"]] == "cpu"
    assert placement["CUDA_VISIBLE_DEVICES"] in (None, "")
    assert placement["gpu_ids"] == []
    assert "GPU" not in placement["assigned_resources"]
    assert placement["device"] == "cpu"
    assert placement["cpu_fallback"] is None


def test_models_answer_through_the_cluster_proxy(deployed: dict[str, Any]) -> None:
    url = deployed["url"]
    digits = requests.post(f"{url}/v1/models/digits:predict", json={"instances": [DIGIT]})
    assert digits.status_code == 200, digits.text
    assert len(digits.json()["predictions"][0]) == 10
    body = {"instances": [{"text": "Once upon a time", "max_new_tokens": 4}]}
    text = requests.post(f"{url}/v1/models/tiny-gpt2:predict", json=body, timeout=60)
    assert text.status_code == 200, text.text
    assert text.json()["predictions"][0].startswith("Once upon a time")


def test_serve_status_shows_the_fleet(cluster: LocalCluster, deployed: dict[str, Any]) -> None:
    status = cluster.serve_status()
    apps = status["applications"]
    assert set(apps) == set(FLEET)
    deployments = {app: apps[app]["deployments"] for app in FLEET}
    assert {app: set(d) for app, d in deployments.items()} == {
        "ingress": {"Ingress"},
        "digits": {"digits"},
        "tiny-gpt2": {"tiny-gpt2"},
    }
    for app in FLEET:
        assert apps[app]["status"] == "RUNNING"
        assert all(d["status"] == "HEALTHY" for d in deployments[app].values())
    assert deployments["tiny-gpt2"]["tiny-gpt2"]["replica_states"] == {"RUNNING": 2}
    assert list(status["proxies"].values()) == ["HEALTHY"]


def _app(config: dict[str, Any], name: str) -> dict[str, Any]:
    (app,) = [app for app in config["applications"] if app["name"] == name]
    return app


def test_second_deploy_updates_only_the_changed_model(
    cluster: LocalCluster, deployed: dict[str, Any]
) -> None:
    url = deployed["url"]
    gpt2_before = replica_stats(url, "tiny-gpt2", 2)
    (digits_id, digits_before), *_ = replica_stats(url, "digits", 1).items()
    assert digits_before["batching"]["max_batch_size"] == 32
    ingress_before = cluster.alive_actor_pids(INGRESS_ACTOR)
    assert len(ingress_before) == 1

    # digits only: batching in place (user_config) and one more replica.
    config = copy.deepcopy(deployed["config"])
    (digits,) = _app(config, "digits")["deployments"]
    digits["num_replicas"] = 2
    digits["user_config"] = {"batching": {"max_batch_size": 64, "batch_wait_timeout_s": 0.002}}
    deploy(cluster, config, "fleet-digits-changed")
    wait_for(
        lambda: (
            cluster.serve_status()["applications"]["digits"]["deployments"]["digits"][
                "replica_states"
            ]
            == {"RUNNING": 2}
        ),
        DEPLOY_TIMEOUT_S,
        "digits to run 2 replicas",
        every_s=2,
    )
    wait_for_app(cluster, "digits", "RUNNING")

    digits_after = replica_stats(url, "digits", 2)
    assert digits_id in digits_after, "the running digits replica was replaced"
    assert digits_after[digits_id]["replica"]["pid"] == digits_before["replica"]["pid"]
    for stats in digits_after.values():
        assert stats["batching"]["max_batch_size"] == 64
        assert deployed["node_pool"][stats["placement"]["node_id"]] == "cpu"
    gpt2_after = replica_stats(url, "tiny-gpt2", 2)
    assert {k: v["replica"]["pid"] for k, v in gpt2_after.items()} == {
        k: v["replica"]["pid"] for k, v in gpt2_before.items()
    }
    assert cluster.alive_actor_pids(INGRESS_ACTOR) == ingress_before, "the ingress restarted"
    deployed["config"] = config


def test_gpu_model_without_fallback_fails_clearly(
    cluster: LocalCluster, deployed: dict[str, Any]
) -> None:
    url = deployed["url"]
    gpt2_before = replica_stats(url, "tiny-gpt2", 2)
    config = copy.deepcopy(deployed["config"])
    strict = {
        "name": "digits-gpu",
        "route_prefix": None,
        "import_path": "serve_app.app:build_model",
        "args": {
            "name": "digits-gpu",
            "framework": "tensorflow",
            "uri": "model_repository/digits",
            "resources": {"num_cpus": 0.1, "num_gpus": 0.5, "accelerator_type": "L4"},
        },
        "deployments": patient_health_checks("digits-gpu"),
    }
    config["applications"].append(strict)
    deploy(cluster, config, "fleet-and-strict")
    app = wait_for_app(cluster, "digits-gpu", "DEPLOY_FAILED")
    message = app["deployments"]["digits-gpu"]["message"]
    assert "model 'digits-gpu' asked for num_gpus=0.5" in message
    assert "TensorFlow sees no CUDA device" in message
    assert "resources.allow_cpu_fallback: true" in message

    # The ingress answers 503 with the reason; the other applications are untouched.
    def unavailable() -> dict[str, Any]:
        response = requests.get(f"{url}/v1/models/digits-gpu", timeout=30)
        if response.status_code != 503:  # reported if it never turns 503
            raise AssertionError(f"answered {response.status_code}: {response.text[:300]}")
        return response.json()

    body = wait_for(unavailable, 120, "digits-gpu to answer 503")
    assert "TensorFlow sees no CUDA device" in body["error"]
    apps = cluster.serve_status()["applications"]
    assert {app: apps[app]["status"] for app in FLEET} == dict.fromkeys(FLEET, "RUNNING")
    gpt2_after = replica_stats(url, "tiny-gpt2", 2)
    assert set(gpt2_after) == set(gpt2_before)
    digits = requests.post(f"{url}/v1/models/digits:predict", json={"instances": [DIGIT]})
    assert digits.status_code == 200, digits.text


def test_cluster_config_is_the_repository_config() -> None:
    """The deployed file differs from serve_config.yaml only in placement and the proxy."""
    original = {
        app["name"]: app
        for app in yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"]
    }
    derived = fleet_config(8000)
    assert [app["name"] for app in derived["applications"]] == list(FLEET)
    for app in derived["applications"]:
        mine = original[app["name"]]
        assert app["import_path"] == mine["import_path"]
        assert app["route_prefix"] == mine["route_prefix"]
        assert app.get("runtime_env") == mine.get("runtime_env")
        if app["name"] != "ingress":
            assert app["args"]["uri"] == mine["args"]["uri"]
            assert not Path(app["args"]["uri"]).is_absolute()  # resolved on each node
