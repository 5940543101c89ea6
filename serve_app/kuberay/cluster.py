"""Apply objects and read the RayService through the official ``kubernetes`` client.

Objects are applied the way ``kubectl apply --server-side`` does it: the dynamic client finds
each kind through the API server's discovery, so any kind an overlay holds (RayService,
NetworkPolicy, PodDisruptionBudget, PodMonitoring, Gateway, ...) applies; the API server
creates what is absent, merges the rest, and removes what an earlier apply of ours set but
this one no longer does, while fields other managers own (the operator's status, a person's
``kubectl edit``) stay theirs. ``dry_run`` asks the server to do all of that without storing
anything, which is also how ``--diff`` learns what would change.

Field validation is ``Strict``: a field the cluster's schema does not know (a RayService field
from a newer KubeRay than the cluster's CRD, such as ``authOptions``) is an error, never
silently dropped. Before applying a RayService, ``require_rayservice_fields`` reads the
cluster's CRD and names the fields it lacks, with the fix (upgrade the operator).

Every expected failure (no credentials, API unreachable, a kind the cluster does not serve,
the KubeRay operator missing, a conflict, a rejected object) raises ``ClusterError`` with a
message that says what to do.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.discovery import LazyDiscoverer
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from serve_app.kuberay.status import assess, describe, pod_problems

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayservices"
FIELD_MANAGER = "serve-app"
FIELD_VALIDATION = "Strict"  # an unknown field is an error (kube-apiserver's default: dropped)
CRD_NAME = f"{PLURAL}.{GROUP}"
# Fields of our RayService that older KubeRay CRDs lack: without them the cluster would run
# without its auth token (authOptions, KubeRay 1.5+) or without the labels the ingress and
# model groups are placed by. "[]" steps into a list's items.
REQUIRED_RAYSERVICE_FIELDS = (
    "spec.rayClusterConfig.authOptions",
    "spec.rayClusterConfig.headGroupSpec.labels",
    "spec.rayClusterConfig.workerGroupSpecs[].labels",
)
CRD_OUTDATED = (
    "the cluster's RayService CRD ({crd}, {version}) does not know {fields}: the API server would"
    " reject (or an older client silently drop) them. Upgrade the KubeRay operator and its CRDs"
    " to v1.7.0 or newer (GKE: a newer cluster version brings a newer Ray Operator add-on;"
    " elsewhere: helm upgrade kuberay-operator kuberay/kuberay-operator --version 1.7.0, and"
    " kubectl apply --server-side -k the CRDs, which Helm does not upgrade)"
)
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
# What to do when the cluster does not serve an API group an overlay uses.
GROUP_HINTS = {
    "ray.io": "enable the Ray Operator add-on or install the KubeRay Helm chart",
    "monitoring.googleapis.com": (
        "enable Managed Service for Prometheus (gcloud container clusters update CLUSTER"
        " --enable-managed-prometheus)"
    ),
    "gateway.networking.k8s.io": (
        "enable the Gateway API (gcloud container clusters update CLUSTER --gateway-api=standard)"
    ),
    "networking.gke.io": (
        "enable the Gateway API (gcloud container clusters update CLUSTER --gateway-api=standard)"
    ),
}
# Fields the API server sets: never part of what we apply, ignored when comparing.
SERVER_METADATA = (
    "managedFields",
    "resourceVersion",
    "generation",
    "uid",
    "creationTimestamp",
    "selfLink",
)


class ClusterError(RuntimeError):
    """A failure talking to the cluster that the user can act on; the message says how."""


@dataclass(frozen=True)
class Applied:
    """One object after a (possibly dry-run) server-side apply."""

    kind: str
    name: str
    namespace: str
    action: str  # "created", "configured" or "unchanged"
    live: dict[str, Any] | None  # the object before the apply; None when it did not exist
    result: dict[str, Any]  # the object as the server stored it, or would have

    @property
    def label(self) -> str:
        """``kind/name``, as kubectl prints it."""
        return f"{self.kind.lower()}/{self.name}"


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


def require_rayservice_fields(
    api: client.ApiClient, fields: tuple[str, ...] = REQUIRED_RAYSERVICE_FIELDS
) -> None:
    """Fail, naming them, when the cluster's RayService CRD lacks any of ``fields``.

    Credentials that may not read CRDs (403) skip the check: the strict apply still refuses
    unknown fields, with the API server's own message.
    """
    with api_errors(api):
        try:
            response = client.ApiextensionsV1Api(api).read_custom_resource_definition(
                CRD_NAME, _preload_content=False
            )
        except ApiException as exc:
            if exc.status == 403:
                return
            if exc.status == 404:
                raise ClusterError(CRD_MISSING) from None
            raise
    crd = json.loads(response.data)
    versions = {v.get("name"): v for v in (crd.get("spec") or {}).get("versions") or []}
    schema = ((versions.get(VERSION) or {}).get("schema") or {}).get("openAPIV3Schema") or {}
    missing = [path for path in fields if not _schema_has(schema, path)]
    if missing:
        labels = (crd.get("metadata") or {}).get("labels") or {}
        version = labels.get("app.kubernetes.io/version") or "version unknown"
        raise ClusterError(
            CRD_OUTDATED.format(crd=CRD_NAME, version=version, fields=", ".join(missing))
        )


def _schema_has(schema: dict[str, Any], path: str) -> bool:
    """Whether an OpenAPI v3 schema declares ``path`` (``a.b[].c``)."""
    node = schema
    for step in path.split("."):
        name, into_items = step.removesuffix("[]"), step.endswith("[]")
        node = (node.get("properties") or {}).get(name)
        if node is None:
            return False
        if into_items:
            node = node.get("items") or {}
    return True


def apply_objects(
    api: client.ApiClient,
    objects: list[dict[str, Any]],
    namespace: str | None = None,
    *,
    dry_run: bool = False,
    force_conflicts: bool = False,
) -> list[Applied]:
    """Server-side apply each object, namespaces first, as field manager ``serve-app``.

    Every kind is looked up before anything is applied, so an overlay with a kind the cluster
    does not serve changes nothing. ``dry_run`` stores nothing (the server's ``dryRun=All``).
    ``force_conflicts`` takes over fields another manager owns instead of failing.
    """
    dynamic = _dynamic(api)
    with api_errors(api):
        resources = [(obj, _resource(dynamic, obj)) for obj in objects]
    missing = sorted({_key(obj) for obj, resource in resources if resource is None})
    if missing:
        raise ClusterError(_missing_kinds_message(missing))
    applier = _Applier(dynamic, namespace, dry_run, force_conflicts)
    ordered = sorted(resources, key=lambda pair: pair[0].get("kind") != "Namespace")
    return [applier.apply(obj, resource) for obj, resource in ordered]


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


def cluster_pods(api: client.ApiClient, rayservice: dict[str, Any]) -> list[dict[str, Any]]:
    """The pods of the RayService's active and pending RayClusters (KubeRay labels them
    ``ray.io/cluster``); none when the credentials may not list pods."""
    status = rayservice.get("status") or {}
    namespace = (rayservice.get("metadata") or {}).get("namespace") or "default"
    names = [
        (status.get(side) or {}).get("rayClusterName")
        for side in ("activeServiceStatus", "pendingServiceStatus")
    ]
    core = client.CoreV1Api(api)
    pods: list[dict[str, Any]] = []
    with api_errors(api):
        for name in filter(None, names):
            try:
                found = core.list_namespaced_pod(namespace, label_selector=f"ray.io/cluster={name}")
            except ApiException as exc:
                if exc.status == 403:  # may read the RayService but not list pods
                    return []
                raise
            pods += [api.sanitize_for_serialization(pod) for pod in found.items]
    return pods


def wait_until_ready(
    api: client.ApiClient,
    name: str,
    namespace: str,
    timeout_s: float,
    poll_s: float = 5.0,
    progress: Callable[[str], None] = lambda line: None,
    heartbeat_s: float = 30.0,
) -> dict[str, Any]:
    """Poll the RayService until KubeRay reports it ready; ``ClusterError`` when an application
    failed to deploy, or when ``timeout_s`` passes (saying whether an operator ever answered).

    ``progress`` gets ``[  12s] waiting for: ...`` with what is not ready yet (the operator's
    reason, applications, pods that are pending or failing) whenever that changes, and at
    least every ``heartbeat_s`` while it does not.
    """
    start = time.monotonic()
    last_report: tuple[str, float] | None = None
    while True:
        rayservice = get_rayservice(api, name, namespace)
        verdict = assess(rayservice)
        if verdict.phase == "ready":
            return rayservice
        if verdict.phase == "failed":
            raise ClusterError(f"RayService {namespace}/{name} failed:\n{describe(rayservice)}")
        elapsed = time.monotonic() - start
        waiting = waiting_for(verdict.reason, pod_problems(cluster_pods(api, rayservice)))
        if (
            last_report is None
            or waiting != last_report[0]
            or elapsed - last_report[1] >= (heartbeat_s)
        ):
            progress(f"[{elapsed:5.0f}s] {waiting}")
            last_report = (waiting, elapsed)
        if elapsed >= timeout_s:
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


def waiting_for(reason: str, problems: list[str]) -> str:
    """One progress message: the RayService's reason, then one indented line per pod."""
    return "\n".join([f"waiting for: {reason}", *(f"         pod {p}" for p in problems)])


def comparable(obj: dict[str, Any] | None) -> dict[str, Any]:
    """``obj`` without what the server alone sets (status, managedFields, versions, ids)."""
    if not obj:
        return {}
    result = {k: copy.deepcopy(v) for k, v in obj.items() if k != "status"}
    meta = {k: v for k, v in (result.get("metadata") or {}).items() if k not in SERVER_METADATA}
    result["metadata"] = meta
    return result


@dataclass
class _Applier:
    """Server-side applies objects one by one, with the same options."""

    dynamic: DynamicClient
    namespace: str | None
    dry_run: bool
    force_conflicts: bool
    # Namespaces a dry run would create: the server cannot dry-run objects into them.
    new_namespaces: set[str] = field(default_factory=set)

    def apply(self, obj: dict[str, Any], resource: Any) -> Applied:
        meta = obj.get("metadata") or {}
        name, kind = meta.get("name"), str(obj.get("kind"))
        if not name:
            raise ClusterError(f"a {kind} without metadata.name cannot be applied")
        ns = (meta.get("namespace") or self.namespace or "default") if resource.namespaced else ""
        body = {k: v for k, v in copy.deepcopy(obj).items() if k != "status"}
        if ns:
            body["metadata"]["namespace"] = ns
        if self.dry_run and ns in self.new_namespaces:
            return Applied(kind, name, ns, "created", None, body)
        with api_errors(self.dynamic.client):
            live = self._live(resource, name, ns)
            try:
                result = self.dynamic.server_side_apply(
                    resource,
                    body=body,
                    name=name,
                    namespace=ns or None,
                    field_manager=FIELD_MANAGER,
                    force_conflicts=True if self.force_conflicts else None,
                    dry_run="All" if self.dry_run else None,
                    query_params=[("fieldValidation", FIELD_VALIDATION)],
                ).to_dict()
            except ApiException as exc:
                if exc.status == 409:
                    raise ClusterError(_conflict_message(f"{kind.lower()}/{name}", exc)) from None
                if exc.status == 400 and "unknown field" in _status_message(exc):
                    raise ClusterError(
                        f"{kind.lower()}/{name}: {_status_message(exc)}. The cluster's schema"
                        f" for {kind} does not know these fields, and strict field validation"
                        " refuses to drop them: upgrade the operator or CRD that defines it"
                    ) from None
                raise
        if live is None:
            if self.dry_run and kind == "Namespace":
                self.new_namespaces.add(name)
            return Applied(kind, name, ns, "created", None, result)
        action = "unchanged" if comparable(live) == comparable(result) else "configured"
        return Applied(kind, name, ns, action, live, result)

    def _live(self, resource: Any, name: str, namespace: str) -> dict[str, Any] | None:
        try:
            return self.dynamic.get(resource, name=name, namespace=namespace or None).to_dict()
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise


def _dynamic(api: client.ApiClient) -> DynamicClient:
    """A dynamic client whose discovery lives in memory: nothing cached on disk between runs,
    so a CRD installed a moment ago is found."""
    with api_errors(api):
        return DynamicClient(api, discoverer=_MemoryDiscoverer)


class _MemoryDiscoverer(LazyDiscoverer):
    """The client's lazy discovery, minus its cache file in the temporary directory."""

    def __init__(self, client: Any, cache_file: str | None) -> None:
        # A path that never exists, so the first lookups ask the server.
        unused = Path(tempfile.gettempdir()) / f"serve-app-discovery-{uuid.uuid4().hex}.json"
        super().__init__(client, cache_file or str(unused))

    def _write_cache(self) -> None:
        pass


def _resource(dynamic: DynamicClient, obj: dict[str, Any]) -> Any | None:
    """The API resource that serves ``obj``'s kind, or None when the cluster has none."""
    try:
        return dynamic.resources.get(api_version=obj.get("apiVersion"), kind=obj.get("kind"))
    except ResourceNotFoundError:
        return None


def _missing_kinds_message(missing: list[tuple[str, str]]) -> str:
    kinds = ", ".join(f"{kind} ({api_version})" for api_version, kind in missing)
    hints = []
    for api_version, _ in missing:
        group = api_version.split("/")[0] if "/" in api_version else ""
        hint = CRD_MISSING if group == GROUP else GROUP_HINTS.get(group)
        if hint and hint not in hints:
            hints.append(hint)
    advice = "; ".join(hints) or "install the CRDs that define them"
    return f"this cluster does not serve {kinds}; nothing was applied: {advice}"


def _conflict_message(label: str, exc: ApiException) -> str:
    return (
        f"{label}: {_status_message(exc)}. Another field manager changed these fields since"
        " the last apply: see the difference with --diff, then apply with --force-conflicts to"
        " take them over (or put the change into the manifests)"
    )


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    return (str(obj.get("apiVersion")), str(obj.get("kind")))


def _status_message(exc: ApiException) -> str:
    """The ``message`` of the API server's ``Status`` body, else the HTTP reason."""
    try:
        return json.loads(exc.body or "")["message"]
    except (ValueError, KeyError, TypeError):
        return str(exc.reason or exc.body or "no details")
