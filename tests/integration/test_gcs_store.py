"""Models served from gs:// through the persistent cache, on real Ray Serve, against a real
GCS emulator (fake-gcs-server) reached by the real client over HTTP.

Replicas reach the emulator through a counting proxy (``STORAGE_EMULATOR_HOST`` is set in
the application's ``runtime_env``), so downloads are counted at the wire: one download for
two replicas starting together, none when a replica restarts, and none possible once the
emulator and the proxy are stopped, when the cached version must still serve.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import requests
from ray import serve

from serve_app.examples import digits_sample
from tests.gcs_emulator import CountingProxy, Emulator, gcs_emulator
from tests.helpers import wait_for
from tests.integration.conftest import deploy, deploy_and_wait, undeploy

pytestmark = pytest.mark.integration

APP = "gcs"  # serves digits from gs://models/digits with two replicas
BAD_APP = "gcsbad"  # a corrupted model and a missing one
BUCKET = "models"
REPLICA_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def gcs(
    serve_url: str, model_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """The emulator holding digits (versions 1 and 2) and a corrupted copy, and a cache dir."""
    root = tmp_path_factory.mktemp("gcs-serve")
    with gcs_emulator(root / "emulator") as (emulator, proxy):
        emulator.create_bucket(BUCKET)
        emulator.upload_dir(BUCKET, "digits", model_repo / "digits")
        emulator.upload_dir(BUCKET, "rotten/1", model_repo / "digits" / "1")
        emulator.corrupt_at_rest(BUCKET, "rotten/1/model.keras")
        try:
            yield {
                "url": serve_url,
                "emulator": emulator,
                "proxy": proxy,
                "cache": root / "cache",
                "repo": model_repo,
            }
        finally:
            for app in (APP, BAD_APP):
                if app in serve.status().applications:
                    undeploy(app)


def app_args(cache: Path, models: list[dict[str, Any]]) -> dict[str, Any]:
    # A short retry budget: when GCS is down, the test need not wait a minute for the fallback.
    return {"models": models, "store": {"cache_dir": str(cache), "retry_timeout_s": 3}}


def digits_args(cache: Path) -> dict[str, Any]:
    digits = {
        "name": "digits",
        "framework": "tensorflow",
        "uri": f"gs://{BUCKET}/digits",
        "num_replicas": 2,
        "resources": {"num_cpus": 0.25},
    }
    return app_args(cache, [digits])


def runtime_env(proxy: CountingProxy) -> dict[str, Any]:
    return {"env_vars": {"STORAGE_EMULATOR_HOST": proxy.url}}


def predict(gcs: dict, app: str, model: str) -> requests.Response:
    url = f"{gcs['url']}/{app}/v1/models/{model}:predict"
    return requests.post(url, json={"instances": digits_sample(3)}, timeout=120)


def model_status(gcs: dict) -> dict[str, Any]:
    response = requests.get(f"{gcs['url']}/{APP}/v1/models/digits", timeout=60)
    assert response.status_code == 200, response.text
    (entry,) = response.json()["model_version_status"]
    return entry


def replica_names() -> set[str]:
    prefix = f"SERVE_REPLICA::{APP}#digits#"
    return {
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith(prefix)
    }


def running_replicas() -> int:
    app = serve.status().applications.get(APP)
    deployment = app.deployments.get("digits") if app else None
    return deployment.replica_states.get("RUNNING", 0) if deployment else 0


def restart_replicas(count: int) -> set[str]:
    """Kill ``count`` digits replicas (as a crashed pod would) and wait for their successors."""
    before = replica_names()
    killed = set(sorted(before)[:count])
    for name in killed:
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)

    def replaced() -> bool:
        names = replica_names()
        return not (names & killed) and len(names - before) == count and running_replicas() == 2

    wait_for(replaced, REPLICA_TIMEOUT_S, f"{count} new digits replica(s) to run")
    return replica_names() - before


def cached_versions(cache: Path, repository: str) -> list[str]:
    return sorted(p.name for p in cache.glob(f"gcs/{BUCKET}/{repository}-*/*") if p.is_dir())


def test_a_model_is_served_from_gcs_and_two_replicas_download_it_once(gcs: dict) -> None:
    proxy: CountingProxy = gcs["proxy"]
    proxy.reset_counts()
    proxy.hold_downloads()  # so that the two replicas' starts overlap for sure
    try:
        deploy(APP, digits_args(gcs["cache"]), runtime_env=runtime_env(proxy))
        wait_for(
            lambda: proxy.in_flight >= 1 and sum("delimiter" in s.query for s in proxy.seen()) >= 2,
            REPLICA_TIMEOUT_S,
            "both replicas to list the versions and one of them to start downloading",
        )
    finally:
        proxy.release_downloads()
    wait_for(
        lambda: (
            running_replicas() == 2 and serve.status().applications[APP].status.value == "RUNNING"
        ),
        REPLICA_TIMEOUT_S,
        f"application '{APP}' to run two digits replicas",
    )

    response = predict(gcs, APP, "digits")
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 3
    assert model_status(gcs) == {
        "version": "2",
        "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""},
    }
    # Counted at the emulator's door: version 2 was downloaded exactly once, version 1 never.
    downloads = [(s.object_name, s.status) for s in proxy.media()]
    assert downloads == [("digits/2/model.keras", 206)]
    assert proxy.media("digits/1/") == []
    assert cached_versions(gcs["cache"], "digits") == ["2"]
    cached = next(gcs["cache"].glob(f"gcs/{BUCKET}/digits-*/2/model/model.keras"))
    assert cached.read_bytes() == (gcs["repo"] / "digits" / "2" / "model.keras").read_bytes()


def test_a_restarted_replica_downloads_nothing(gcs: dict) -> None:
    proxy: CountingProxy = gcs["proxy"]
    proxy.reset_counts()
    restart_replicas(1)
    assert proxy.media() == []
    assert sum(s.body_bytes for s in proxy.seen() if s.is_media) == 0
    # The new replica did reach GCS through the proxy: it listed the versions.
    assert any("delimiter" in s.query for s in proxy.seen())
    wait_for(lambda: predict(gcs, APP, "digits").status_code == 200, 60, "digits to answer again")
    assert model_status(gcs)["version"] == "2"


def test_a_corrupted_object_is_refused_and_a_missing_prefix_named(gcs: dict) -> None:
    proxy: CountingProxy = gcs["proxy"]
    models = [
        {"name": name, "framework": "tensorflow", "uri": f"gs://{BUCKET}/{name}"}
        | {"resources": {"num_cpus": 0.25}}
        for name in ("rotten", "missing")
    ]
    deploy_and_wait(
        BAD_APP,
        app_args(gcs["cache"], models),
        expect=("DEPLOY_FAILED",),
        runtime_env=runtime_env(proxy),
    )
    wait_for(
        lambda: all(
            serve.status().applications[BAD_APP].deployments[name].status.value == "DEPLOY_FAILED"
            for name in ("rotten", "missing")
        ),
        REPLICA_TIMEOUT_S,
        "both bad models to fail",
    )
    rotten = predict(gcs, BAD_APP, "rotten")
    assert rotten.status_code == 503, rotten.text
    error = rotten.json()["error"]
    assert "checksum mismatch: gs://models/rotten/1/model.keras is corrupted" in error
    assert "Traceback" not in error

    missing = predict(gcs, BAD_APP, "missing")
    assert missing.status_code == 503, missing.text
    assert "gs://models/missing not found" in missing.json()["error"]
    assert requests.get(f"{gcs['url']}/{BAD_APP}/v1/models/missing", timeout=60).status_code == 503

    assert cached_versions(gcs["cache"], "rotten") == []  # never cached, so never served
    assert len(proxy.media("rotten/1/model.keras")) >= 3  # it was downloaded, and refused
    undeploy(BAD_APP)


def test_gcs_stopped_before_a_restart_still_serves_the_cached_version(gcs: dict) -> None:
    proxy: CountingProxy = gcs["proxy"]
    emulator: Emulator = gcs["emulator"]
    proxy.stop()
    emulator.stop()
    restart_replicas(2)  # every replica is new, so every answer comes from one of them
    response = wait_for(
        lambda: (r := predict(gcs, APP, "digits")).status_code == 200 and r,
        60,
        "digits to answer from the cache",
    )
    assert len(response.json()["predictions"]) == 3
    entry = model_status(gcs)
    assert entry["version"] == "2" and entry["state"] == "AVAILABLE"
    message = entry["status"]["error_message"]
    assert message.startswith("serving version 2 from cache: gs://models/digits is unreachable")
