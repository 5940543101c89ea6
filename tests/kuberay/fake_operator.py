"""A stand-in for the KubeRay operator: a thread that, like the real one, watches RayServices
through the API server and reports their status through the ``status`` subresource.

For each new spec generation it first reports the applications as deploying, then, on its next
pass, the outcome it was told to play (``RUNNING`` or ``DEPLOY_FAILED``).
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
        deployments = _deployments(rayservice)
        if status.get("observedGeneration") != generation:
            return _status(generation, "DEPLOYING", deployments, "UPDATING", ready=False)
        apps = status["activeServiceStatus"]["applicationStatuses"]
        if apps["models"]["status"] == "DEPLOYING":
            if self.outcome == "RUNNING":
                return _status(generation, "RUNNING", deployments, "HEALTHY", ready=True)
            return _status(generation, self.outcome, deployments, "UNHEALTHY", ready=False)
        return None


def _deployments(rayservice: dict[str, Any]) -> list[str]:
    """The Serve deployments the fleet in ``serveConfigV2`` has: one per model, plus the ingress."""
    serve_config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    (app,) = serve_config["applications"]
    return [m["name"] for m in app["args"]["models"]] + ["Ingress"]


def _status(generation, app_status, deployments, deployment_status, ready) -> dict[str, Any]:
    message = "" if app_status != "DEPLOY_FAILED" else "model 'digits' failed to load: no such file"
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
                "models": {
                    "status": app_status,
                    "message": message,
                    "serveDeploymentStatuses": {
                        name: {"status": deployment_status} for name in deployments
                    },
                }
            },
        },
    }
