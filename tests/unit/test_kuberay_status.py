"""Reading a RayService's status as KubeRay reports it."""

from __future__ import annotations

from typing import Any

from serve_app.kuberay.status import assess, describe, pod_problems, summary


def rayservice(status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    meta = {"name": "serve-app", "namespace": "serve-app", "generation": generation}
    return {"metadata": meta, "status": status} if status is not None else {"metadata": meta}


def apps(status: str, message: str = "", deployments: dict | None = None) -> dict[str, Any]:
    app = {"status": status, "message": message, "serveDeploymentStatuses": deployments or {}}
    return {"rayClusterName": "serve-app-raycluster-x", "applicationStatuses": {"models": app}}


def ready_condition(status: str, reason: str = "NonZeroServeEndpoints") -> dict[str, Any]:
    return {"type": "Ready", "status": status, "reason": reason}


def test_no_status_means_no_operator_has_seen_it() -> None:
    assert assess(rayservice(None)).phase == "no-status"
    assert assess(rayservice({})).phase == "no-status"


def test_ready_needs_the_ready_condition_and_running_applications() -> None:
    status = {
        "observedGeneration": 1,
        "conditions": [ready_condition("True")],
        "activeServiceStatus": apps("RUNNING"),
    }
    assert assess(rayservice(status)).phase == "ready"
    status["activeServiceStatus"] = apps("DEPLOYING")
    verdict = assess(rayservice(status))
    assert verdict.phase == "pending"
    assert "models: DEPLOYING" in verdict.reason


def test_status_of_an_older_generation_is_not_trusted() -> None:
    status = {
        "observedGeneration": 1,
        "conditions": [ready_condition("True")],
        "activeServiceStatus": apps("DEPLOY_FAILED", "old failure"),
    }
    verdict = assess(rayservice(status, generation=2))
    assert verdict.phase == "pending"
    assert "generation 2" in verdict.reason


def test_deploy_failed_in_the_pending_cluster_fails_with_the_message() -> None:
    status = {
        "observedGeneration": 3,
        "conditions": [ready_condition("True"), {"type": "UpgradeInProgress", "status": "True"}],
        "activeServiceStatus": apps("RUNNING"),
        "pendingServiceStatus": apps("DEPLOY_FAILED", "model 'gpt2' failed to load"),
    }
    verdict = assess(rayservice(status, generation=3))
    assert verdict.phase == "failed"
    assert verdict.reason == "application 'models' is DEPLOY_FAILED: model 'gpt2' failed to load"


def test_an_upgrade_in_progress_is_not_ready_yet() -> None:
    status = {
        "conditions": [ready_condition("True"), {"type": "UpgradeInProgress", "status": "True"}],
        "activeServiceStatus": apps("RUNNING"),
    }
    verdict = assess(rayservice(status))
    assert verdict.phase == "pending"
    assert "upgrade in progress" in verdict.reason


def test_operators_before_conditions_report_service_status() -> None:
    status = {"serviceStatus": "Running", "activeServiceStatus": apps("RUNNING")}
    assert assess(rayservice(status)).phase == "ready"
    assert assess(rayservice({"serviceStatus": "", "activeServiceStatus": {}})).phase == "pending"


def test_describe_lists_clusters_applications_and_deployments() -> None:
    deployments = {
        "minilm": {"status": "HEALTHY"},
        "digits": {"status": "UNHEALTHY", "message": "replica died"},
    }
    status = {
        "observedGeneration": 1,
        "numServeEndpoints": 2,
        "conditions": [ready_condition("False", "Initializing")],
        "activeServiceStatus": apps("DEPLOYING", deployments=deployments),
    }
    assert describe(rayservice(status)).splitlines() == [
        "RayService serve-app/serve-app: pending (Initializing; models: DEPLOYING)",
        "  serve endpoints: 2",
        "  active cluster: serve-app-raycluster-x",
        "    application models: DEPLOYING",
        "      digits: UNHEALTHY - replica died",
        "      minilm: HEALTHY",
    ]


def pod(name: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": status}


def test_pod_problems_say_what_each_unready_pod_waits_for() -> None:
    unschedulable = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
    }
    missing_secret = {
        "name": "ray-worker",
        "state": {
            "waiting": {
                "reason": "CreateContainerConfigError",
                "message": 'secret "serve-app-tokens" not found',
            }
        },
    }
    pods = [
        pod("gpu", phase="Pending", conditions=[unschedulable]),
        pod("cpu", phase="Pending", conditions=[{"type": "PodScheduled", "status": "True"}],
            containerStatuses=[missing_secret]),
        pod("starting", phase="Running", conditions=[{"type": "Ready", "status": "False"}]),
        pod("ready", phase="Running", conditions=[{"type": "Ready", "status": "True"}]),
        pod("done", phase="Succeeded"),
    ]  # fmt: skip
    assert pod_problems(pods) == [
        "gpu: Pending, Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
        'cpu: Pending, ray-worker CreateContainerConfigError: secret "serve-app-tokens" not found',
        "starting: Running, not ready yet",
    ]
    status = {"conditions": [ready_condition("False", "Initializing")]}
    text = describe(rayservice(status), pods)
    assert text.splitlines()[-4:] == [
        "  pods not ready:",
        *(f"    {p}" for p in pod_problems(pods)),
    ]


def test_summary_is_the_status_as_json() -> None:
    deployments = {"digits": {"status": "HEALTHY"}}
    status = {
        "observedGeneration": 1,
        "numServeEndpoints": 2,
        "conditions": [ready_condition("True")],
        "activeServiceStatus": apps("RUNNING", deployments=deployments),
    }
    assert summary(rayservice(status)) == {
        "name": "serve-app", "namespace": "serve-app", "ready": True, "phase": "ready",
        "reason": "NonZeroServeEndpoints", "generation": 1, "observedGeneration": 1,
        "serveEndpoints": 2, "podsNotReady": [],
        "clusters": {"active": {"name": "serve-app-raycluster-x", "applications": {"models": {
            "status": "RUNNING", "message": "",
            "deployments": {"digits": {"status": "HEALTHY", "message": ""}}}}}},
    }  # fmt: skip
    assert summary(rayservice(None))["phase"] == "no-status"
