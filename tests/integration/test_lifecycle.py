"""One application per model: adding, changing or removing one model touches no other.

The fleet here is written as the default serve_config.yaml writes it: an ingress
application (``build_ingress``) and one application per model (``build_model``, named after
the model, no route prefix). While models are added, changed and removed, a client keeps
calling the models that are not touched; none of its requests may fail, and the replicas
of those models (and the ingress) keep their process ids.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
from ray import serve

from serve_app.examples import digits_sample
from tests.helpers import wait_for
from tests.integration.conftest import deploy_apps, undeploy

INGRESS_APP = "lifecycle"
ROW = digits_sample(1)[0]


def _model_app(name: str, repo: Path, **more: Any) -> dict[str, Any]:
    args = {"name": name, "framework": "tensorflow", "uri": str(repo / "digits")}
    args["resources"] = {"num_cpus": 0.1}
    args.update(more)
    return {
        "name": name,
        "route_prefix": None,
        "import_path": "serve_app.app:build_model",
        "args": args,
    }


def _ingress_app() -> dict[str, Any]:
    return {
        "name": INGRESS_APP,
        "route_prefix": f"/{INGRESS_APP}",
        "import_path": "serve_app.app:build_ingress",
        "args": {"num_cpus": 0.1},
    }


def _pids() -> dict[str, set[int]]:
    """Running replicas' pids by application."""
    details = serve.context._get_global_client().get_serve_details()
    found: dict[str, set[int]] = {}
    for app_name, app in details["applications"].items():
        for deployment in app["deployments"].values():
            for replica in deployment["replicas"]:
                if getattr(replica["state"], "value", replica["state"]) == "RUNNING":
                    found.setdefault(app_name, set()).add(replica["pid"])
    return found


def _predict(base: str, model: str) -> requests.Response:
    body = {"instances": [ROW]}
    return requests.post(f"{base}/v1/models/{model}:predict", json=body, timeout=60)


class Caller(threading.Thread):
    """Calls some models in a loop until stopped; counts what did not answer 200."""

    def __init__(self, base: str, models: list[str]) -> None:
        super().__init__(daemon=True)
        self.base, self.models = base, models
        self.answered = 0
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with requests.Session() as session:
            while not self.stop.is_set():
                for model in self.models:
                    try:
                        response = session.post(
                            f"{self.base}/v1/models/{model}:predict",
                            json={"instances": [ROW]},
                            timeout=60,
                        )
                        if response.status_code == 200:
                            self.answered += 1
                        else:
                            self.failures.append(f"{model}: {response.status_code} {response.text}")
                    except requests.RequestException as exc:
                        self.failures.append(f"{model}: {exc!r}")


@pytest.fixture
def per_model_fleet(serve_url: str, model_repo: Path) -> Any:
    names = ("lc-keep", "lc-change", "lc-remove")
    deploy_apps([_ingress_app(), *(_model_app(n, model_repo) for n in names)])
    base = f"{serve_url}/{INGRESS_APP}"
    for name in names:
        wait_for(lambda n=name: _predict(base, n).status_code == 200, 240, f"{name} to answer")
    yield base
    for name in (INGRESS_APP, *names, "lc-new"):
        with contextlib.suppress(Exception):  # already gone
            undeploy(name)


def test_changing_one_model_restarts_only_that_model(
    per_model_fleet: str, model_repo: Path
) -> None:
    base = per_model_fleet
    before = _pids()
    caller = Caller(base, ["lc-keep"])
    caller.start()
    try:
        deploy_apps(
            [
                _model_app("lc-new", model_repo),  # added
                # A load setting changed: its replicas restart with it.
                _model_app("lc-change", model_repo, resources={"num_cpus": 0.15}),
            ],
            remove=("lc-remove",),
        )
        wait_for(lambda: _predict(base, "lc-new").status_code == 200, 240, "lc-new to answer")
        wait_for(
            lambda: (
                _pids().get("lc-change", set()) - before["lc-change"]
                and len(_pids()["lc-change"]) == 1
            ),
            240,
            "lc-change to run on a new replica",
        )
        assert _predict(base, "lc-change").status_code == 200
        wait_for(
            lambda: _predict(base, "lc-remove").status_code == 404, 120, "lc-remove to be gone"
        )
    finally:
        caller.stop.set()
        caller.join(timeout=120)
    after = _pids()
    assert after["lc-keep"] == before["lc-keep"]
    assert after[INGRESS_APP] == before[INGRESS_APP]
    assert caller.failures == [], caller.failures[:5]
    assert caller.answered > 0
    gone = _predict(base, "lc-remove").json()["error"]
    assert "model 'lc-remove' not found" in gone and "lc-keep" in gone
