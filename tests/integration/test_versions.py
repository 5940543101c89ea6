"""Live version changes under traffic: from the repository (local and gs://) and the config.

Each version of the test model answers ``x + version``, so every answer says which version
gave it. Traffic runs in threads the whole time; no request may fail.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from ray import serve

from tests.gcs_emulator import gcs_emulator
from tests.helpers import wait_for
from tests.integration.conftest import deploy, deploy_and_wait, undeploy

pytestmark = pytest.mark.integration

APP = "versions"
POLL_S = 0.2
WORKERS = 3


def write_offset_model(directory: Path, offset: float) -> Path:
    """A SavedModel answering ``x + offset``, written to a staging dir then renamed in."""
    import tensorflow as tf

    class Offset(tf.Module):
        def __init__(self) -> None:
            self.offset = tf.Variable(offset, dtype=tf.float32)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x: Any) -> dict[str, Any]:
            return {"y": x + self.offset}

    module = Offset()
    staging = directory.parent / f".{directory.name}.staging"
    tf.saved_model.save(module, str(staging), signatures={"serving_default": module.serve})
    os.rename(staging, directory)  # a version appears whole, as TF Serving recommends
    return directory


@pytest.fixture
def versions_app(serve_url: str) -> Iterator[str]:
    """The application's URL; each test deploys it afresh and it is deleted afterwards."""
    yield f"{serve_url}/{APP}"
    if APP in serve.status().applications:
        undeploy(APP)


class Traffic:
    """Threads that predict in a loop and record every answer, until stopped."""

    def __init__(self, url: str, label: str | None = None) -> None:
        path = f"labels/{label}:predict" if label else ":predict"
        self.url = url + (f"/{path}" if label else path)
        self.answers: list[list[tuple[int, Any]]] = [[] for _ in range(WORKERS)]
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(WORKERS)
        ]

    def _run(self, worker: int) -> None:
        deadline = time.monotonic() + 300  # bounded, whatever happens
        with requests.Session() as session:
            while not self._stop.is_set() and time.monotonic() < deadline:
                response = session.post(self.url, json={"instances": [0.0]}, timeout=60)
                body = response.json()
                self.answers[worker].append((response.status_code, body))

    def seen(self) -> set[float]:
        return {body["predictions"][0] for ans in self.answers for _, body in ans if _ == 200}

    def latest(self) -> float | None:
        last = [ans[-1] for ans in self.answers if ans and ans[-1][0] == 200]
        return last[-1][1]["predictions"][0] if last else None

    def count(self) -> int:
        return sum(len(ans) for ans in self.answers)

    @contextmanager
    def running(self) -> Iterator[Traffic]:
        for thread in self._threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in self._threads:
                thread.join(timeout=90)

    def assert_no_failures_and_monotonic(self) -> None:
        failures = [(s, b) for ans in self.answers for s, b in ans if s != 200]
        assert not failures, failures[:3]
        for answers in self.answers:  # each thread's answers never go back to an older version
            values = [body["predictions"][0] for _, body in answers]
            assert values == sorted(values), values


def status(url: str, model: str) -> dict[int, dict]:
    body = requests.get(f"{url}/v1/models/{model}", timeout=30).json()
    return {int(s["version"]): s for s in body["model_version_status"]}


def swap_args(uri: str, **more: Any) -> dict[str, Any]:
    model = {
        "name": "swap",
        "framework": "tensorflow",
        "uri": uri,
        "poll_interval_s": POLL_S,
        "resources": {"num_cpus": 0.25},
        **more,
    }
    return {"models": [model]}


def test_a_new_version_in_the_repository_takes_over_without_a_failed_request(
    versions_app: str, tmp_path: Path
) -> None:
    repo = tmp_path / "swap"
    repo.mkdir()
    write_offset_model(repo / "1", 1.0)
    deploy_and_wait(APP, swap_args(str(repo)))
    model = f"{versions_app}/v1/models/swap"
    traffic = Traffic(model)
    with traffic.running():
        wait_for(lambda: traffic.count() > 20, 60, "traffic on version 1")
        write_offset_model(repo / "2", 2.0)
        wait_for(lambda: traffic.latest() == 2.0, 120, "answers from version 2")
        wait_for(lambda: status(versions_app, "swap")[1]["state"] == "END", 60, "v1 unloaded")
        # A broken next version is refused; version 2 keeps answering.
        broken = tmp_path / ".3"
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
        os.rename(broken, repo / "3")
        wait_for(lambda: 3 in status(versions_app, "swap"), 60, "version 3 to be tried")
        wait_for(lambda: status(versions_app, "swap")[3]["state"] == "END", 60, "v3 to fail")
        answered = traffic.count()
        wait_for(lambda: traffic.count() > answered + 20, 60, "more traffic after the failure")
    traffic.assert_no_failures_and_monotonic()
    assert traffic.seen() == {1.0, 2.0}
    final = status(versions_app, "swap")
    assert final[2]["state"] == "AVAILABLE"
    assert final[3]["status"]["error_code"] == "UNKNOWN"
    assert "version 3" in final[3]["status"]["error_message"]
    assert "failed to load" in final[3]["status"]["error_message"]


def test_a_start_with_the_newest_version_broken_serves_the_older_good_one(
    versions_app: str, tmp_path: Path
) -> None:
    """Under ``latest: 1`` a replica that starts while the newest version is broken (as after
    a restart) serves the newest version that loads, and reports the broken one with its
    reason (issue 25, item 9)."""
    repo = tmp_path / "swap"
    repo.mkdir()
    write_offset_model(repo / "1", 1.0)
    (repo / "2").mkdir()
    (repo / "2" / "model.keras").write_bytes(b"not a keras file")
    app = deploy_and_wait(
        APP, swap_args(str(repo), poll_interval_s=0), expect=("RUNNING", "DEPLOY_FAILED")
    )
    assert app.status.value == "RUNNING", app
    answer = requests.post(f"{versions_app}/v1/models/swap:predict", json={"instances": [0.0]})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"predictions": [1.0]}
    versions = status(versions_app, "swap")
    assert versions[1]["state"] == "AVAILABLE", versions
    assert versions[2]["state"] == "END", versions
    assert versions[2]["status"]["error_code"] == "UNKNOWN", versions
    assert "version 2" in versions[2]["status"]["error_message"], versions
    assert "failed to load" in versions[2]["status"]["error_message"], versions


def test_versions_pinned_and_labels_moved_through_the_config(
    versions_app: str, tmp_path: Path
) -> None:
    repo = tmp_path / "swap"
    repo.mkdir()
    for number in (1, 2):
        write_offset_model(repo / str(number), float(number))
    args = swap_args(str(repo), version_policy={"specific": [1]}, labels={"stable": 1})
    deploy_and_wait(APP, args)
    model = f"{versions_app}/v1/models/swap"
    default, stable = Traffic(model), Traffic(model, label="stable")
    with default.running(), stable.running():
        wait_for(lambda: default.count() > 10 and stable.count() > 10, 60, "traffic")
        # Serve v1 and v2 side by side, with a canary label on v2: no restart, no reload of v1.
        canary = {"version_policy": {"specific": [1, 2]}, "labels": {"stable": 1, "canary": 2}}
        deploy(APP, args, deployments=[{"name": "swap", "user_config": canary}])
        wait_for(
            lambda: (
                requests.post(
                    f"{model}/labels/canary:predict", json={"instances": [0.0]}, timeout=30
                ).json()
                == {"predictions": [2.0]}
            ),
            120,
            "the canary label to answer from version 2",
        )
        assert default.latest() == 2.0  # the newest wanted version is the default
        # Promote: only v2, and stable moves to it.
        promoted = {"version_policy": {"specific": [2]}, "labels": {"stable": 2}}
        deploy(APP, args, deployments=[{"name": "swap", "user_config": promoted}])
        wait_for(lambda: stable.latest() == 2.0, 120, "stable to move to version 2")
        wait_for(lambda: status(versions_app, "swap")[1]["state"] == "END", 60, "v1 unloaded")
    default.assert_no_failures_and_monotonic()
    stable.assert_no_failures_and_monotonic()
    assert stable.seen() == {1.0, 2.0}
    v2 = requests.post(
        f"{versions_app}/v2/models/swap/labels/stable/infer",
        timeout=30,
        json={"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0.0]}]},
    ).json()
    assert v2["model_version"] == "2" and v2["outputs"][0]["data"] == [2.0]


def test_twenty_swaps_return_memory_near_its_baseline(versions_app: str, tmp_path: Path) -> None:
    repo = tmp_path / "swap"
    repo.mkdir()
    write_offset_model(repo / "1", 1.0)
    template = tmp_path / "template"
    write_offset_model(template, 0.0)
    deploy_and_wait(APP, swap_args(str(repo)))
    stats_url = f"{versions_app}/v2/models/swap/stats"
    rss: dict[int, int] = {}
    for number in range(2, 22):
        shutil.copytree(template, tmp_path / f".{number}")
        os.rename(tmp_path / f".{number}", repo / str(number))
        wait_for(
            lambda n=number: (
                status(versions_app, "swap")[n - 1]["state"] == "END"
                and status(versions_app, "swap")[n]["state"] == "AVAILABLE"
            ),
            60,
            f"swap to version {number}",
        )
        shutil.rmtree(repo / str(number - 1))  # old versions leave the repository
        rss[number] = requests.get(stats_url, timeout=30).json()["replica"]["rss_bytes"]
    growth = rss[21] - rss[5]  # after warm-up (first loads fill TF's caches)
    assert growth < 48 * 2**20, {n: r // 2**20 for n, r in rss.items()}


def test_a_new_version_in_gcs_takes_over_even_after_gcs_failed_during_its_load(
    versions_app: str, tmp_path: Path, model_repo: Path
) -> None:
    """GCS fails while version 2 downloads: version 1 keeps answering; once GCS is back,
    the retry loads version 2 and it takes over. No request fails throughout."""
    staging = tmp_path / "staging"
    staging.mkdir()
    for number in (1, 2):
        write_offset_model(staging / str(number), float(number))
    with gcs_emulator(tmp_path / "emulator") as (emulator, proxy):
        _deploy_from_gcs(emulator, proxy, staging / "1", tmp_path / "cache")
        traffic = Traffic(f"{versions_app}/v1/models/swap")
        with traffic.running():
            wait_for(lambda: traffic.count() > 20, 60, "traffic on version 1")
            proxy.inject(*["503"] * 1000)  # every download of version 2 fails for now
            emulator.upload_dir("live", "swap/2", staging / "2")
            wait_for(
                lambda: status(versions_app, "swap").get(2, {}).get("state") == "END",
                120,
                "the failed load of version 2",
            )
            error = status(versions_app, "swap")[2]["status"]["error_message"]
            assert "version 2" in error, error
            assert traffic.latest() == 1.0
            proxy.clear_faults()  # GCS is back: the retry (10 s later) loads version 2
            wait_for(lambda: traffic.latest() == 2.0, 120, "answers from version 2")
        undeploy(APP)  # before the emulator stops
    traffic.assert_no_failures_and_monotonic()
    assert traffic.seen() == {1.0, 2.0}


def _deploy_from_gcs(emulator: Any, proxy: Any, version_1: Path, cache: Path) -> None:
    """Model ``swap`` from ``gs://live/swap`` (version 1 uploaded), polled every 0.5 s,
    through the emulator's fault-injecting proxy."""
    emulator.create_bucket("live")
    emulator.upload_dir("live", "swap/1", version_1)
    args = swap_args("gs://live/swap", poll_interval_s=0.5)
    args["store"] = {"cache_dir": str(cache), "retry_timeout_s": 3}
    env = {"env_vars": {"STORAGE_EMULATOR_HOST": proxy.url}}
    deploy_and_wait(APP, args, runtime_env=env)


def test_a_half_uploaded_version_in_gcs_loads_once_its_upload_completes(
    versions_app: str, tmp_path: Path
) -> None:
    """Version 2 is listed while its upload is in progress (no ``variables/`` yet): its load
    fails and version 1 keeps answering. Once the upload completes, the retry drops the
    incomplete cached copy, lists GCS again, downloads version 2 whole, and it takes over.
    No request fails throughout (issue 25, item 8)."""
    staging = tmp_path / "staging"
    staging.mkdir()
    for number in (1, 2):
        write_offset_model(staging / str(number), float(number))
    files = sorted(p for p in (staging / "2").rglob("*") if p.is_file())
    later = [p for p in files if p.relative_to(staging / "2").parts[0] == "variables"]
    assert later, "the SavedModel has variables to upload last"
    with gcs_emulator(tmp_path / "emulator") as (emulator, proxy):
        _deploy_from_gcs(emulator, proxy, staging / "1", tmp_path / "cache")
        traffic = Traffic(f"{versions_app}/v1/models/swap")

        def upload(paths: list[Path]) -> None:
            for path in paths:
                name = f"swap/2/{path.relative_to(staging / '2').as_posix()}"
                emulator.upload_bytes("live", name, path.read_bytes())

        with traffic.running():
            wait_for(lambda: traffic.count() > 20, 60, "traffic on version 1")
            upload([p for p in files if p not in later])  # the upload is under way
            wait_for(
                lambda: status(versions_app, "swap").get(2, {}).get("state") == "END",
                120,
                "the failed load of the half-uploaded version 2",
            )
            error = status(versions_app, "swap")[2]["status"]["error_message"]
            assert "version 2" in error, error
            assert traffic.latest() == 1.0
            upload(later)  # the upload completes: the retry (10 s after the failure) loads it
            wait_for(lambda: traffic.latest() == 2.0, 120, "answers from version 2")
            assert status(versions_app, "swap")[2]["state"] == "AVAILABLE"
        undeploy(APP)  # before the emulator stops
    traffic.assert_no_failures_and_monotonic()
    assert traffic.seen() == {1.0, 2.0}
