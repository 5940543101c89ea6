"""Judge and describe a RayService's status, as KubeRay (v1.x) reports it. Pure functions."""

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


def describe(rayservice: dict[str, Any]) -> str:
    """A few lines for people: readiness, clusters, applications and their deployments."""
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
    return "\n".join(lines)


def _applications(status: dict[str, Any], side: str) -> dict[str, dict[str, Any]]:
    return (status.get(side) or {}).get("applicationStatuses") or {}
