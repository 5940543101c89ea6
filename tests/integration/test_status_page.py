"""The status page over real HTTP: ``GET /`` (static, open) and ``GET /fleet`` (its data).

Against the shared fleet (its ``broken`` model fails to load), and an ingress of its own with
bearer tokens beside a model that scales to zero: the page itself needs no token, its data
does, and a model at zero replicas shows as such without being woken by the page.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
import requests
from ray import serve

from serve_app import status_page
from serve_app.examples import digits_sample
from serve_app.fleet_view import REPORT_TTL_S
from tests.helpers import wait_for
from tests.integration.conftest import QUICK_SCALE_TO_ZERO, deploy_apps, model_app, undeploy

pytestmark = pytest.mark.integration

DEFAULT_FLEET = ("digits", "minilm", "tiny-gpt2")
TOKEN = "status-page-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def fleet_json(url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = requests.get(f"{url}/fleet", headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


def entry(data: dict[str, Any], name: str) -> dict[str, Any]:
    found = [m for m in data["models"] if m["name"] == name]
    assert found, f"{name} not in {[m['name'] for m in data['models']]}"
    return found[0]


def test_the_page_is_static_html_answered_at_once(fleet: dict) -> None:
    response = requests.get(f"{fleet['url']}/", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.content == status_page.PAGE
    assert "connect-src 'self'" in response.headers["content-security-policy"]
    head = requests.head(f"{fleet['url']}/", timeout=30)
    assert head.status_code == 200 and head.content == b""


def test_fleet_json_shows_models_versions_replicas_reasons_and_recent_traffic(
    fleet: dict,
) -> None:
    url = fleet["url"]
    sample = {"instances": digits_sample(1)}
    for _ in range(5):
        assert requests.post(f"{url}/v1/models/digits:predict", json=sample, timeout=60).ok
    bad = requests.post(f"{url}/v1/models/digits:predict", json={"nope": 1}, timeout=60)
    assert bad.status_code == 400
    broken_error = requests.get(f"{url}/v1/models/broken", timeout=60).json()["error"]

    # Reports come from the replicas within a few seconds of the first look.
    def with_report() -> dict[str, Any] | None:
        data = fleet_json(url)
        return data if entry(data, "digits")["versions"] else None

    data = wait_for(with_report, 60, "digits's replica report")
    for name in (*DEFAULT_FLEET, "half-plus-two", "two-versions", "sentiment"):
        model = entry(data, name)
        assert model["state"] == "serving" and model["status"] == "HEALTHY", model
        assert model["running_replicas"] >= 1 and model["min_replicas"] == 1
        assert all(r["pid"] and r["state"] == "RUNNING" for r in model["replicas"])
        assert model["application"] == "fleet"

    digits = entry(data, "digits")
    assert {v["state"] for v in digits["versions"]} >= {"AVAILABLE"}
    assert digits["report"]["replica"]["pid"] in {r["pid"] for r in digits["replicas"]}
    # This ingress (one replica) answered them all within the last 60 s.
    recent = digits["recent"]
    assert recent["requests"] >= 6 and recent["client_errors"] >= 1, recent
    assert recent["p50_ms"] > 0 and recent["rps"] > 0

    broken = entry(data, "broken")
    assert broken["state"] == "unavailable" and broken["status"] == "DEPLOY_FAILED"
    assert broken["reason"] == broken_error and "failed to load" in broken["reason"]
    assert broken["versions"] == [] and broken["report"] is None  # never asked
    assert data["pools"] == []
    assert data["ingress"]["window_s"] == 60 and data["ingress"]["replica"]


# --- an ingress with tokens, and a model that scales to zero ------------------------------

APP = "statuspage"
SLEEPY = "dozy"


def _replicas(app: str) -> list[dict[str, Any]]:
    details = serve.context._get_global_client().get_serve_details()
    deployment = details["applications"].get(app, {}).get("deployments", {}).get(app, {})
    return [
        r
        for r in deployment.get("replicas", [])
        if getattr(r["state"], "value", r["state"]) == "RUNNING"
    ]


@pytest.fixture(scope="module")
def guarded(fleet: dict, model_repo: Path):
    ingress = {
        "name": APP,
        "route_prefix": f"/{APP}",
        "import_path": "serve_app.app:build_ingress",
        "args": {"auth_tokens": [TOKEN]},
    }
    sleepy = model_app(
        SLEEPY,
        {
            "uri": str(model_repo / "digits"),
            "resources": {"num_cpus": 0.1},
            "autoscaling": QUICK_SCALE_TO_ZERO,
        },
    )
    deploy_apps([ingress, sleepy])
    url = f"{fleet['url']}/{APP}"
    try:
        wait_for(
            lambda: requests.get(f"{url}/v2/models/{SLEEPY}", headers=AUTH, timeout=60).ok,
            240,
            "the sleepy model to answer through its ingress",
        )
        yield url
    finally:
        for name in (APP, SLEEPY):
            with contextlib.suppress(Exception):
                undeploy(name)


def test_the_page_needs_no_token_and_its_data_does(guarded: str) -> None:
    page = requests.get(f"{guarded}/", timeout=30)
    assert page.status_code == 200 and page.content == status_page.PAGE
    refused = requests.get(f"{guarded}/fleet", timeout=30)
    assert refused.status_code == 401 and "bearer token" in refused.json()["error"]
    wrong = requests.get(f"{guarded}/fleet", headers={"Authorization": "Bearer no"}, timeout=30)
    assert wrong.status_code == 401
    assert entry(fleet_json(guarded, AUTH), SLEEPY)["application"] == SLEEPY


def test_a_model_at_zero_replicas_shows_so_and_the_page_does_not_wake_it(
    guarded: str,
) -> None:
    wait_for(lambda: not _replicas(SLEEPY), 180, "the idle model to go to zero replicas")
    # The page reads Serve's view at most every REPORT_TTL_S: it may lag Serve by that much.
    wait_for(
        lambda: entry(fleet_json(guarded, AUTH), SLEEPY)["state"] == "scaled to zero",
        3 * REPORT_TTL_S,
        "the page to show the model at zero replicas",
    )
    seen = []
    for _ in range(3):
        sleepy = entry(fleet_json(guarded, AUTH), SLEEPY)
        assert sleepy["state"] == "scaled to zero", sleepy
        assert sleepy["running_replicas"] == 0 and sleepy["min_replicas"] == 0
        seen.append(sleepy["report"])
    # Not asked at zero: its report, if any, is the one read while it was up, unchanged (a
    # reading, or a reading that failed, would have changed read_at or error).
    assert seen[0] is None or (
        seen[0]["error"] is None and len({r["read_at"] for r in seen}) == 1
    ), seen
    assert not _replicas(SLEEPY)
    # A request wakes it (cold start); with traffic, the page reads its versions again.
    body = {"instances": digits_sample(1)}
    answer = requests.post(
        f"{guarded}/v1/models/{SLEEPY}:predict", json=body, headers=AUTH, timeout=120
    )
    assert answer.status_code == 200, answer.text

    def reported() -> dict[str, Any] | None:
        model = entry(fleet_json(guarded, AUTH), SLEEPY)
        return model if model["state"] == "serving" and model["versions"] else None

    woken = wait_for(reported, 60, "the woken model's report")
    assert woken["recent"]["requests"] >= 1
