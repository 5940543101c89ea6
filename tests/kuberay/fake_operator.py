"""A stand-in for the KubeRay operator: a thread that, like the real one, watches RayServices
through the API server and reports their status through the ``status`` subresource.

For each new spec generation it first reports the applications as deploying, then, on its next
pass, the outcome it was told to play (``RUNNING``, or ``DEPLOY_FAILED`` for the application that
serves the model ``digits``, the others running). Applications and their deployments are those
of the ``serveConfigV2``, as Serve names them: one status per application, with the ingress
deployment ``Ingress`` and one deployment per model, named after it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayservices"


class FakeOperator(threading.Thread):
    """Reconciles the RayServices of ``namespace`` every ``period_s`` until stopped."""

    def __init__(
        self, kubeconfig: Path, namespace: str, outcome: str = "RUNNING", period_s: float = 0.05
    ) -> None:
        super().__init__(name="fake-kuberay-operator", daemon=True)
        self.api = client.CustomObjectsApi(config.new_client_from_config(str(kubeconfig)))
        self.namespace, self.outcome, self.period_s = namespace, outcome, period_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.period_s):
            found = self.api.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
            for rayservice in found["items"]:
                status = self._next_status(rayservice)
                if status is not None:
                    self.api.patch_namespaced_custom_object_status(
                        GROUP, VERSION, self.namespace, PLURAL,
                        rayservice["metadata"]["name"], {"status": status},
                    )  # fmt: skip

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)

    def _next_status(self, rayservice: dict[str, Any]) -> dict[str, Any] | None:
        generation = rayservice["metadata"]["generation"]
        status = rayservice.get("status") or {}
        apps = _applications(rayservice)
        if status.get("observedGeneration") != generation:
            return _status(generation, {name: "DEPLOYING" for name in apps}, apps, ready=False)
        reported = status["activeServiceStatus"]["applicationStatuses"]
        if any(app["status"] == "DEPLOYING" for app in reported.values()):
            failing = self.outcome != "RUNNING"
            outcome = {
                name: self.outcome if failing and "digits" in deployments else "RUNNING"
                for name, deployments in apps.items()
            }
            return _status(generation, outcome, apps, ready=not failing)
        return None


def _applications(rayservice: dict[str, Any]) -> dict[str, list[str]]:
    """The Serve applications of ``serveConfigV2`` and their deployments: the ingress
    (``Ingress``), and one per model or pool, named after it."""
    found = {}
    for app in yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"]:
        args = app.get("args") or {}
        if app["import_path"] == "serve_app.app:build_app":
            entries = [*(args.get("models") or []), *(args.get("pools") or [])]
            found[app["name"]] = [e["name"] for e in entries] + ["Ingress"]
        elif app["import_path"] == "serve_app.app:build_ingress":
            found[app["name"]] = ["Ingress"]
        else:
            found[app["name"]] = [args["name"]]
    return found


_DEPLOYMENT_STATUS = {"DEPLOYING": "UPDATING", "RUNNING": "HEALTHY", "DEPLOY_FAILED": "UNHEALTHY"}


def _status(
    generation: int, outcome: dict[str, str], apps: dict[str, list[str]], ready: bool
) -> dict[str, Any]:
    return {
        "observedGeneration": generation,
        "serviceStatus": "Running" if ready else "",
        "numServeEndpoints": 2 if ready else 0,
        "conditions": [
            {
                "type": "Ready",
                "status": str(ready),
                "reason": "NonZeroServeEndpoints" if ready else "Initializing",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "message": "",
            },
            {
                "type": "UpgradeInProgress",
                "status": "False",
                "reason": "NoPendingCluster",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "message": "",
            },
        ],
        "activeServiceStatus": {
            "rayClusterName": "serve-app-raycluster-abcde",
            "applicationStatuses": {
                name: {
                    "status": outcome[name],
                    "message": (
                        "model 'digits' failed to load: no such file"
                        if outcome[name] == "DEPLOY_FAILED"
                        else ""
                    ),
                    "serveDeploymentStatuses": {
                        deployment: {"status": _DEPLOYMENT_STATUS[outcome[name]]}
                        for deployment in deployments
                    },
                }
                for name, deployments in apps.items()
            },
        },
    }
