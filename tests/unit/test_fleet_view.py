"""The status JSON's pure parts (``serve_app/fleet_view.py``) and the static page."""

from __future__ import annotations

import re

from serve_app import guard, status_page
from serve_app.fleet_status import ModelHealth
from serve_app.fleet_view import (
    AWAKE_S,
    Report,
    askable,
    model_entry,
    pool_entry,
    state_of,
    versions_of,
)

RUNNING = {"replica_id": "r1", "state": "RUNNING", "pid": 4242, "node_ip": "10.0.0.5"}
HEALTHY = ModelHealth("HEALTHY", 1, "", 1, (RUNNING,))
AT_ZERO = ModelHealth("HEALTHY", 0, "", 0, ())
COLD_STARTING = ModelHealth("UPDATING", 0, "", 0, ({**RUNNING, "state": "STARTING"},))
FAILED = ModelHealth("DEPLOY_FAILED", 0, "Traceback ...\nModelLoadError: bad file", 1, ())
RECENT = {"requests": 3, "rps": 0.05, "errors": 1, "client_errors": 0, "p50_ms": 4.2}
REASON = "model 'broken' is not available: bad file"

# A replica's model_stats, as deployments/host.py writes version_traffic.
STATS = {
    "versions": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
    ],
    "version_traffic": {
        "2": {
            "state": "AVAILABLE",
            "error": "",
            "labels": ["canary"],
            "traffic_weight": 10,
            "requests": 40,
            "errors": 0,
            "p50_ms": 3.1,
        },
        "1": {
            "state": "AVAILABLE",
            "error": "",
            "labels": ["stable"],
            "traffic_weight": 90,
            "requests": 360,
            "errors": 2,
            "p50_ms": 2.9,
        },
    },
    "replica": {"id": "r1", "pid": 4242, "rss_bytes": 1},
    "placement": {"device": "cpu", "node_id": "n"},
    "load_seconds": 1.5,
}


def test_state_of_each_case() -> None:
    assert state_of(HEALTHY, None) == "serving"
    assert state_of(FAILED, REASON) == "unavailable"
    assert state_of(AT_ZERO, None) == "scaled to zero"
    assert state_of(COLD_STARTING, None) == "starting"
    assert state_of(ModelHealth("UPDATING", 0, "", 1, ()), None) == "starting"
    assert state_of(None, None) == "unknown"


def test_a_model_that_cannot_answer_or_may_sleep_is_not_asked() -> None:
    assert askable(HEALTHY, None, None)
    assert not askable(FAILED, REASON, 0.0)  # its reason is shown instead
    assert not askable(None, None, 0.0)  # Serve's view not read yet
    assert not askable(AT_ZERO, None, 0.0)  # a call would start a replica
    assert not askable(COLD_STARTING, None, 0.0)
    awake_at_min_zero = ModelHealth("HEALTHY", 1, "", 0, (RUNNING,))
    assert askable(awake_at_min_zero, None, 0.0)  # it has traffic: the page adds nothing
    assert not askable(awake_at_min_zero, None, AWAKE_S)  # idle: our call would keep it up
    assert not askable(awake_at_min_zero, None, None)


def test_versions_from_the_replica_report_oldest_first() -> None:
    versions = versions_of(STATS)
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[1] == {
        "version": 2,
        "state": "AVAILABLE",
        "error": None,
        "labels": ["canary"],
        "traffic_weight": 10,
        "requests": 40,
        "errors": 0,
        "p50_ms": 3.1,
    }
    # A replica without per-version traffic: TF Serving's statuses, errors included.
    old = {
        "versions": [
            {"version": "3", "state": "END", "status": {"error_message": "could not load"}}
        ]
    }
    assert versions_of(old)[0]["version"] == 3
    assert versions_of(old)[0]["error"] == "could not load"


def test_a_failed_model_shows_its_reason_and_no_versions() -> None:
    entry = model_entry("broken", "tensorflow", "fleet", FAILED, REASON, None, RECENT, 0.0)
    assert entry["state"] == "unavailable" and entry["reason"] == REASON
    assert entry["status"] == "DEPLOY_FAILED" and entry["message"] is None
    assert entry["versions"] == [] and entry["report"] is None
    assert entry["recent"] == RECENT and entry["running_replicas"] == 0


def test_a_serving_model_shows_replicas_versions_and_its_report() -> None:
    from serve_app.fleet_view import model_report

    report = Report(model_report(STATS), None, 100.0)
    entry = model_entry("digits", "tensorflow", "digits", HEALTHY, None, report, RECENT, 102.5)
    assert entry["state"] == "serving" and entry["application"] == "digits"
    assert entry["replicas"] == [RUNNING] and entry["min_replicas"] == 1
    assert [(v["version"], v["traffic_weight"]) for v in entry["versions"]] == [(1, 90), (2, 10)]
    assert entry["report"] == {
        "read_at": 100.0,
        "age_s": 2.5,
        "error": None,
        "replica": {"id": "r1", "pid": 4242, "rss_bytes": 1},
        "device": "cpu",
        "load_seconds": 1.5,
    }


def test_a_report_that_failed_keeps_the_error_and_the_entry() -> None:
    report = Report(None, "no report within 2 s", 10.0)
    entry = model_entry("slow", "tensorflow", "slow", HEALTHY, None, report, RECENT, 11.0)
    assert entry["report"] == {"read_at": 10.0, "age_s": 1.0, "error": "no report within 2 s"}
    assert entry["versions"] == [] and entry["state"] == "serving"


def test_a_waiting_model_shows_serves_message() -> None:
    waiting = ModelHealth("UPDATING", 0, "1 replica has taken more than 30s to start", 1, ())
    entry = model_entry("big", "tensorflow", "big", waiting, None, None, RECENT, 0.0)
    assert entry["state"] == "starting" and "taken more than 30s" in entry["message"]


def test_a_pool_lists_its_models_and_what_a_replica_holds() -> None:
    holds = {"name": "pool", "models_loaded": ["m1"], "models_loading": ["m2"]}
    report = Report({"holds": holds, "listed": None}, None, 5.0)
    entry = pool_entry(
        "pool", "tensorflow", "pool", HEALTHY, None, ["m1", "m2", "m3"], report, RECENT, 6.0
    )
    assert entry["models"] == ["m1", "m2", "m3"] and entry["holds"] == holds
    # Not listed by the ingress yet: the listing read for the page.
    report = Report({"holds": holds, "listed": ["m9"]}, None, 5.0)
    entry = pool_entry("pool", "tensorflow", "pool", HEALTHY, None, [], report, RECENT, 6.0)
    assert entry["models"] == ["m9"]


def test_the_page_is_open_and_its_data_is_guarded() -> None:
    assert guard.is_open("/") and guard.is_open("/myapp", "/myapp")
    assert guard.is_open("/myapp/", "/myapp")
    assert not guard.is_open("/fleet") and not guard.is_open("/myapp/fleet", "/myapp")


def test_the_page_loads_nothing_from_elsewhere() -> None:
    html = status_page.PAGE.decode("utf-8")
    assert not re.search(r"https?://", html)  # no CDN, no other origin
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=", html)
    assert 'fetch(base + "fleet"' in html  # relative: works below a route prefix
    assert "innerHTML" not in html  # model names and reasons are written as text
    assert "connect-src 'self'" in status_page.CONTENT_SECURITY_POLICY
