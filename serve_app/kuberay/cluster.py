"""Apply and read the RayService (and the namespace and service account beside it) through the
official ``kubernetes`` client: ``CustomObjectsApi`` for ``rayservices.ray.io/v1``.

Objects are applied the way ``kubectl apply`` does it: created when absent, otherwise changed
with a three-way JSON merge patch, remembering what was applied in kubectl's own
``last-applied-configuration`` annotation, so this and ``kubectl apply -k`` can take turns.
Every expected failure (no credentials, API unreachable, the KubeRay CRD or operator missing, a
rejected object) raises ``ClusterError`` with a message that says what to do.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from serve_app.kuberay.merge_patch import three_way_merge_patch
from serve_app.kuberay.status import assess, describe

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayservices"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
MERGE_PATCH = "application/merge-patch+json"
GKE_CREDENTIALS_HINT = (
    "for GKE: gcloud container clusters get-credentials CLUSTER --location LOCATION"
)
CRD_MISSING = (
    "the RayService CRD (rayservices.ray.io/v1) is not installed in this cluster: enable the"
    " Ray Operator add-on (gcloud container clusters update CLUSTER --location LOCATION"
    " --update-addons=RayOperator=ENABLED) or install the KubeRay operator with its Helm chart"
)
OPERATOR_MISSING = (
    "has no status after {seconds:g} s: the KubeRay operator is not running or does not watch"
    " namespace '{namespace}' (GKE: check the Ray Operator add-on; elsewhere: kubectl get pods"
    " -A -l app.kubernetes.io/name=kuberay-operator)"
)


class ClusterError(RuntimeError):
    """A failure talking to the cluster that the user can act on; the message says how."""


@dataclass(frozen=True)
class _Kind:
    """How to read, create and patch one kind of object; results are plain dicts."""

    read: Callable[[str, str], Any]
    create: Callable[[str, dict], Any]
    patch: Callable[[str, str, dict], Any]
    namespaced: bool


def connect(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """An API client from a kubeconfig (``--kubeconfig``, ``$KUBECONFIG``, ``~/.kube/config``),
    or from the pod's service account when running inside a cluster."""
    paths = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    existing = [p for p in paths.split(os.pathsep) if p and Path(p).expanduser().is_file()]
    if kubeconfig and not existing:
        raise ClusterError(f"kubeconfig {kubeconfig} not found")
    if existing:
        try:
            return config.new_client_from_config(
                config_file=os.pathsep.join(existing), context=context
            )
        except (ConfigException, OSError, ValueError) as exc:
            raise ClusterError(f"cannot use kubeconfig {', '.join(existing)}: {exc}") from None
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except ConfigException as exc:
            raise ClusterError(f"in-cluster credentials are not usable: {exc}") from None
        return client.ApiClient(configuration)
    raise ClusterError(
        f"no Kubernetes credentials: no kubeconfig at {paths} and not running in a pod"
        f" ({GKE_CREDENTIALS_HINT})"
    )


@contextmanager
def api_errors(api: client.ApiClient) -> Iterator[None]:
    """Turn the client's exceptions into ``ClusterError``s that name the server and the fix."""
    host = api.configuration.host
    try:
        yield
    except ApiException as exc:
        message = _status_message(exc)
        if exc.status == 401:
            raise ClusterError(
                f"the Kubernetes API at {host} rejected the credentials (401 Unauthorized):"
                f" refresh them ({GKE_CREDENTIALS_HINT})"
            ) from None
        if exc.status == 403:
            raise ClusterError(f"the Kubernetes API at {host} forbids this: {message}") from None
        raise ClusterError(
            f"the Kubernetes API at {host} answered {exc.status}: {message}"
        ) from None
    except urllib3.exceptions.HTTPError as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ClusterError(f"cannot reach the Kubernetes API at {host}: {reason}") from None


def require_rayservice_crd(api: client.ApiClient) -> None:
    """Fail with a clear message unless the cluster serves ``rayservices.ray.io/v1``."""
    with api_errors(api):
        try:
            found = client.CustomObjectsApi(api).get_api_resources(GROUP, VERSION)
        except ApiException as exc:
            if exc.status == 404:
                raise ClusterError(CRD_MISSING) from None
            raise
    if PLURAL not in {resource.name for resource in found.resources or []}:
        raise ClusterError(CRD_MISSING)


def apply_objects(
    api: client.ApiClient, objects: list[dict[str, Any]], namespace: str | None = None
) -> list[str]:
    """Create or patch each object (namespaces first); one ``kind/name outcome`` line each."""
    kinds = _kinds(api)
    unsupported = sorted({_key(o) for o in objects} - kinds.keys())
    if unsupported:
        raise ClusterError(
            "cannot apply "
            + ", ".join(f"{kind} ({api_version})" for api_version, kind in unsupported)
            + f"; supported: {', '.join(kind for _, kind in kinds)} (use kubectl apply for others)"
        )
    ordered = sorted(objects, key=lambda o: o.get("kind") != "Namespace")
    return [_apply_one(api, kinds[_key(o)], o, namespace) for o in ordered]


def get_rayservice(api: client.ApiClient, name: str, namespace: str) -> dict[str, Any]:
    """The RayService as the API server has it, status included."""
    with api_errors(api):
        try:
            return client.CustomObjectsApi(api).get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                raise ClusterError(
                    f"RayService '{name}' not found in namespace '{namespace}'"
                    " (apply it with: serve-app kuberay apply -k kuberay/overlays/OVERLAY)"
                ) from None
            raise


def wait_until_ready(
    api: client.ApiClient,
    name: str,
    namespace: str,
    timeout_s: float,
    poll_s: float = 5.0,
    progress: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Poll the RayService until KubeRay reports it ready; ``ClusterError`` when an application
    failed to deploy, or when ``timeout_s`` passes (saying whether an operator ever answered)."""
    deadline = time.monotonic() + timeout_s
    last_reason = None
    while True:
        rayservice = get_rayservice(api, name, namespace)
        verdict = assess(rayservice)
        if verdict.phase == "ready":
            return rayservice
        if verdict.phase == "failed":
            raise ClusterError(f"RayService {namespace}/{name} failed:\n{describe(rayservice)}")
        if verdict.reason != last_reason:
            progress(f"waiting: {verdict.reason}")
            last_reason = verdict.reason
        if time.monotonic() >= deadline:
            if verdict.phase == "no-status":
                raise ClusterError(
                    f"RayService {namespace}/{name} "
                    + OPERATOR_MISSING.format(seconds=timeout_s, namespace=namespace)
                )
            raise ClusterError(
                f"RayService {namespace}/{name} is not ready after {timeout_s:g} s:"
                f" {verdict.reason}\n{describe(rayservice)}"
            )
        time.sleep(poll_s)


def _apply_one(api: client.ApiClient, kind: _Kind, obj: dict, namespace: str | None) -> str:
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    label = f"{obj.get('kind', '?').lower()}/{name}"
    if not name:
        raise ClusterError(f"a {obj.get('kind')} without metadata.name cannot be applied")
    ns = (meta.get("namespace") or namespace or "default") if kind.namespaced else ""
    desired = _with_last_applied(obj, ns)
    with api_errors(api):
        try:
            live = _plain(api, kind.read(name, ns))
        except ApiException as exc:
            if exc.status != 404:
                raise
            kind.create(ns, desired)
            return f"{label} created"
        annotations = (live.get("metadata") or {}).get("annotations") or {}
        last_applied = json.loads(annotations.get(LAST_APPLIED) or "{}")
        patch = three_way_merge_patch(last_applied, live, desired)
        if not patch:
            return f"{label} unchanged"
        kind.patch(name, ns, patch)
        return f"{label} configured"


def _with_last_applied(obj: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The object to send: namespace set, no status, and kubectl's record of what we applied."""
    desired = {k: v for k, v in obj.items() if k != "status"}
    meta = dict(desired.get("metadata") or {})
    if namespace:
        meta["namespace"] = namespace
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != LAST_APPLIED}
    record_meta = {k: v for k, v in meta.items() if k != "annotations"}
    if annotations:
        record_meta["annotations"] = dict(annotations)
    record = dict(desired, metadata=record_meta)
    annotations[LAST_APPLIED] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return dict(desired, metadata=dict(meta, annotations=annotations))


def _plain(api: client.ApiClient, value: Any) -> dict[str, Any]:
    """Typed models of the core API as plain JSON-style dicts (custom objects already are)."""
    return value if isinstance(value, dict) else api.sanitize_for_serialization(value)


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    return (str(obj.get("apiVersion")), str(obj.get("kind")))


def _kinds(api: client.ApiClient) -> dict[tuple[str, str], _Kind]:
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    merge = {"_content_type": MERGE_PATCH}  # the typed API would default to strategic merge
    return {
        ("v1", "Namespace"): _Kind(
            read=lambda name, ns: core.read_namespace(name),
            create=lambda ns, body: core.create_namespace(body),
            patch=lambda name, ns, body: core.patch_namespace(name, body, **merge),
            namespaced=False,
        ),
        ("v1", "ServiceAccount"): _Kind(
            read=lambda name, ns: core.read_namespaced_service_account(name, ns),
            create=lambda ns, body: core.create_namespaced_service_account(ns, body),
            patch=lambda name, ns, body: core.patch_namespaced_service_account(
                name, ns, body, **merge
            ),
            namespaced=True,
        ),
        (f"{GROUP}/{VERSION}", "RayService"): _Kind(
            read=lambda name, ns: custom.get_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, name
            ),
            create=lambda ns, body: custom.create_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, body
            ),
            patch=lambda name, ns, body: custom.patch_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, name, body
            ),
            namespaced=True,
        ),
    }


def _status_message(exc: ApiException) -> str:
    """The ``message`` of the API server's ``Status`` body, else the HTTP reason."""
    try:
        return json.loads(exc.body or "")["message"]
    except (ValueError, KeyError, TypeError):
        return str(exc.reason or exc.body or "no details")
