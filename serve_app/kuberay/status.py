"""Judge and describe a RayService's status, as KubeRay (v1.x) reports it, and say what its
pods wait for. Pure functions over the objects the API server returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Phase = Literal["ready", "failed", "pending", "no-status"]


@dataclass(frozen=True)
class Assessment:
    """Where a RayService stands, and why."""

    phase: Phase
    reason: str


def assess(rayservice: dict[str, Any]) -> Assessment:
    """Ready, failed, still pending, or never touched by an operator (no status at all)."""
    status = rayservice.get("status") or {}
    generation = (rayservice.get("metadata") or {}).get("generation")
    if not status:
        return Assessment("no-status", "the KubeRay operator has not reported any status")
    observed = status.get("observedGeneration")
    if generation is not None and observed is not None and observed < generation:
        # The status describes an older spec: judging it would report a stale verdict.
        return Assessment("pending", f"the operator has not yet seen generation {generation}")
    failed = [
        f"application '{name}' is DEPLOY_FAILED: {app.get('message') or 'no message'}"
        for side in ("activeServiceStatus", "pendingServiceStatus")
        for name, app in _applications(status, side).items()
        if app.get("status") == "DEPLOY_FAILED"
    ]
    if failed:
        return Assessment("failed", "; ".join(failed))
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    upgrading = conditions.get("UpgradeInProgress", {}).get("status") == "True"
    if "Ready" in conditions:
        ready = conditions["Ready"].get("status") == "True"
        detail = conditions["Ready"].get("reason") or conditions["Ready"].get("message") or ""
    else:  # operators before KubeRay 1.3 report only serviceStatus
        ready = status.get("serviceStatus") == "Running"
        detail = status.get("serviceStatus") or ""
    not_running = [
        f"{name}: {app.get('status')}"
        for name, app in _applications(status, "activeServiceStatus").items()
        if app.get("status") != "RUNNING"
    ]
    if ready and not upgrading and not not_running:
        return Assessment("ready", detail or "Ready")
    reasons = [detail] if detail and not ready else []
    reasons += ["a new cluster is being prepared (upgrade in progress)"] if upgrading else []
    reasons += not_running or ([] if ready else ["no application is running yet"])
    return Assessment("pending", "; ".join(reasons))


def describe(rayservice: dict[str, Any], pods: list[dict[str, Any]] | None = None) -> str:
    """A few lines for people: readiness, clusters, applications and their deployments, and
    the pods that keep it from being ready."""
    meta = rayservice.get("metadata") or {}
    status = rayservice.get("status") or {}
    verdict = assess(rayservice)
    lines = [
        f"RayService {meta.get('namespace', '?')}/{meta.get('name', '?')}:"
        f" {verdict.phase} ({verdict.reason})"
    ]
    if status.get("numServeEndpoints") is not None:
        lines.append(f"  serve endpoints: {status['numServeEndpoints']}")
    for side, label in (("activeServiceStatus", "active"), ("pendingServiceStatus", "pending")):
        service = status.get(side) or {}
        if not service.get("rayClusterName") and not service.get("applicationStatuses"):
            continue
        lines.append(f"  {label} cluster: {service.get('rayClusterName') or '(not created yet)'}")
        for name, app in _applications(status, side).items():
            message = f" - {app['message']}" if app.get("message") else ""
            lines.append(f"    application {name}: {app.get('status', '?')}{message}")
            for deployment, dstatus in sorted((app.get("serveDeploymentStatuses") or {}).items()):
                detail = f" - {dstatus['message']}" if dstatus.get("message") else ""
                lines.append(f"      {deployment}: {dstatus.get('status', '?')}{detail}")
    problems = pod_problems(pods or [])
    if problems:
        lines.append("  pods not ready:")
        lines += [f"    {problem}" for problem in problems]
    return "\n".join(lines)


def summary(rayservice: dict[str, Any], pods: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The status as one JSON-ready mapping (``serve-app kuberay status -o json``)."""
    meta = rayservice.get("metadata") or {}
    status = rayservice.get("status") or {}
    verdict = assess(rayservice)
    clusters = {}
    for side, label in (("activeServiceStatus", "active"), ("pendingServiceStatus", "pending")):
        service = status.get(side) or {}
        if not service.get("rayClusterName") and not service.get("applicationStatuses"):
            continue
        clusters[label] = {
            "name": service.get("rayClusterName"),
            "applications": {
                name: {
                    "status": app.get("status"),
                    "message": app.get("message") or "",
                    "deployments": {
                        deployment: {
                            "status": dstatus.get("status"),
                            "message": dstatus.get("message") or "",
                        }
                        for deployment, dstatus in sorted(
                            (app.get("serveDeploymentStatuses") or {}).items()
                        )
                    },
                }
                for name, app in _applications(status, side).items()
            },
        }
    return {
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "ready": verdict.phase == "ready",
        "phase": verdict.phase,
        "reason": verdict.reason,
        "generation": meta.get("generation"),
        "observedGeneration": status.get("observedGeneration"),
        "serveEndpoints": status.get("numServeEndpoints"),
        "clusters": clusters,
        "podsNotReady": pod_problems(pods or []),
    }


def pod_problems(pods: list[dict[str, Any]]) -> list[str]:
    """``name: why`` for each pod that is not ready: unschedulable (the scheduler's message,
    e.g. no node with a free GPU), waiting containers (image pull, missing Secret, crash loop),
    or simply not ready yet. Ready and finished pods are left out."""
    problems = []
    for pod in pods:
        name = (pod.get("metadata") or {}).get("name", "?")
        status = pod.get("status") or {}
        phase = status.get("phase") or "Pending"
        if phase == "Succeeded" or (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        if conditions.get("Ready", {}).get("status") == "True":
            continue
        scheduled = conditions.get("PodScheduled", {})
        if scheduled.get("status") == "False":
            why = f"{scheduled.get('reason') or 'not scheduled'}: {scheduled.get('message', '')}"
            problems.append(f"{name}: {phase}, {why.strip().rstrip(':')}")
            continue
        waiting = [
            f"{c.get('name')} {state['waiting'].get('reason', 'waiting')}"
            + (f": {state['waiting']['message']}" if state["waiting"].get("message") else "")
            for key in ("initContainerStatuses", "containerStatuses")
            for c in status.get(key) or []
            if "waiting" in (state := c.get("state") or {})
        ]
        problems.append(f"{name}: {phase}, " + ("; ".join(waiting) or "not ready yet"))
    return problems


def _applications(status: dict[str, Any], side: str) -> dict[str, dict[str, Any]]:
    return (status.get(side) or {}).get("applicationStatuses") or {}
