"""A small, real Kubernetes API server for tests: HTTP on 127.0.0.1, objects kept in memory.

It speaks the part of the API that the ``kubernetes`` client (typed and dynamic) uses here, the
way kube-apiserver does:

- discovery: ``/version``, ``/api``, ``/apis`` and one resource list per group version, for
  every kind the overlays hold (and pods); a group that is not installed is absent (404);
- objects: GET (404 with a ``Status`` body when absent), list (with an equality
  ``labelSelector``), POST (201; 409 when it exists), PATCH as a JSON merge patch, PATCH as a
  server-side apply (``application/apply-patch+yaml``: create if absent, ``fieldManager``
  required, field ownership and conflicts in ``managedFields``, ``force``; see fake_ssa.py),
  ``dryRun=All`` on writes (checked and answered, not stored); other patch types get 415;
- the RayService CRD (``apiextensions.k8s.io/v1``, from ``tests/data/kuberay/`` or the one a
  test gives), and its schema applied to RayServices as kube-apiserver applies a structural
  schema: ``fieldValidation=Strict`` turns an unknown field into 400 ("strict decoding error:
  unknown field"); with ``prune_unknown_fields`` other applies drop them without a word (off
  by default, so that the server's own tests can apply arbitrary specs);
- a namespaced object needs its namespace to exist (404), as with the NamespaceLifecycle
  admission plugin;
- the ``status`` subresource is the only way to change ``status``; writes to the main resource
  leave it alone, and ``metadata.generation`` counts changes outside metadata and status;
- requests need the bearer token, or get 401.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from tests.helpers import KUBERAY_CRDS
from tests.kuberay import fake_ssa

TOKEN = "test-token"
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
VERSION_INFO = {"major": "1", "minor": "34", "gitVersion": "v1.34.1", "platform": "linux/amd64"}


@dataclass(frozen=True)
class Resource:
    """One served resource type."""

    group_version: str  # "v1" for the core group
    plural: str
    kind: str
    namespaced: bool
    has_status: bool

    @property
    def group(self) -> str:
        return self.group_version.rpartition("/")[0]


def _r(group_version: str, plural: str, kind: str, namespaced: bool = True, status: bool = True):
    return Resource(group_version, plural, kind, namespaced, status)


# Every kind in kuberay/ (tests/kuberay/test_manifests.py checks that), and pods.
RESOURCES = [
    _r("v1", "namespaces", "Namespace", namespaced=False),
    _r("v1", "serviceaccounts", "ServiceAccount", status=False),
    _r("v1", "pods", "Pod"),
    _r("networking.k8s.io/v1", "networkpolicies", "NetworkPolicy", status=False),
    _r("policy/v1", "poddisruptionbudgets", "PodDisruptionBudget"),
    _r("ray.io/v1", "rayservices", "RayService"),
    _r("monitoring.googleapis.com/v1", "podmonitorings", "PodMonitoring"),
    _r("gateway.networking.k8s.io/v1", "gateways", "Gateway"),
    _r("gateway.networking.k8s.io/v1", "httproutes", "HTTPRoute"),
    _r("networking.gke.io/v1", "healthcheckpolicies", "HealthCheckPolicy"),
    _r("networking.gke.io/v1", "gcpbackendpolicies", "GCPBackendPolicy"),
    _r(
        "apiextensions.k8s.io/v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
    ),
]


@functools.cache
def kuberay_rayservice_crd() -> dict[str, Any]:
    """KubeRay v1.7.0's RayService CRD (parsed once; callers copy before changing it)."""
    text = (KUBERAY_CRDS / "ray.io_rayservices.yaml").read_text()
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def unknown_fields(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths in ``obj`` that a structural schema does not declare (what pruning removes)."""
    found: list[str] = []
    if isinstance(obj, dict) and "properties" in schema:
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            props = schema["properties"]
            for key, value in obj.items():
                where = f"{path}.{key}" if path else key
                if key in props:
                    found += unknown_fields(value, props[key], where)
                elif not (path == "" and key in ("apiVersion", "kind", "metadata")):
                    found.append(where)
    elif isinstance(obj, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, value in obj.items():
            found += unknown_fields(value, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(obj):
            found += unknown_fields(value, schema["items"], f"{path}[{i}]")
    return found


def _prune(obj: dict[str, Any], paths: list[str]) -> None:
    for path in paths:
        steps = [s for s in path.replace("[", ".[").split(".") if s]
        node: Any = obj
        for step in steps[:-1]:
            node = node[int(step[1:-1])] if step.startswith("[") else node[step]
        node.pop(steps[-1], None)


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details


@dataclass
class FakeApiServer:
    """The server's state. ``crd_installed=False`` serves no ``ray.io`` group; the API groups
    in ``missing_groups`` (e.g. ``monitoring.googleapis.com``) are not served either."""

    crd_installed: bool = True
    missing_groups: tuple[str, ...] = ()
    # The RayService CRD the cluster has (default: KubeRay v1.7.0's); tests give older ones.
    rayservice_crd: dict[str, Any] | None = None
    prune_unknown_fields: bool = False
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _versions: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def resources(self) -> list[Resource]:
        missing = set(self.missing_groups) | (set() if self.crd_installed else {"ray.io"})
        return [r for r in RESOURCES if r.group not in missing]

    def crds(self) -> dict[str, dict[str, Any]]:
        """The installed CRDs by name, kept apart from ``objects`` (what clients applied)."""
        if not self.crd_installed:
            return {}
        crd = self.rayservice_crd or kuberay_rayservice_crd()
        return {crd["metadata"]["name"]: crd}

    def rayservice_schema(self) -> dict[str, Any]:
        crd = self.crds()["rayservices.ray.io"]
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        return v1["schema"]["openAPIV3Schema"]

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A stored object (a copy), for assertions."""
        with self.lock:
            return copy.deepcopy(self.objects.get((plural, namespace, name)))

    # Request handling.
    def handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Any]:
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.requests.append((method, url.path))
        content_type = (headers.get("Content-Type") or "").split(";")[0].strip()
        parts = [p for p in url.path.split("/") if p]
        if method == "GET" and parts == ["version"]:
            return 200, VERSION_INFO
        if method == "GET" and parts == ["api"]:
            return 200, {"kind": "APIVersions", "versions": ["v1"]}
        if method == "GET" and parts == ["apis"]:
            return 200, self._group_list()
        group_version, segments = _split(parts)
        served = [r for r in self.resources if r.group_version == group_version]
        if not served:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not segments and method == "GET":
            return 200, _resource_list(group_version, served)
        resource, namespace, name, subresource = _route(served, segments)
        manager = query.get("fieldManager") or _user_agent_manager(headers)
        dry_run = query.get("dryRun") == "All"
        with self.lock:
            if name is None:
                if method == "GET":
                    return 200, self._list(resource, namespace, query.get("labelSelector"))
                if method == "POST":
                    created = self._create(resource, namespace, _json(body), manager, dry_run)
                    return 201, created
            elif method == "GET":
                return 200, self._read(resource, namespace, name, subresource)
            elif method == "PATCH" and content_type == APPLY_PATCH:
                if subresource:
                    raise ApiError(405, "MethodNotAllowed", "apply to the main resource only")
                applied = _yaml(body)
                force = query.get("force", "false").lower() == "true"
                return self._apply(resource, namespace, name, applied, query, force, dry_run)
            elif method == "PATCH" and content_type == MERGE_PATCH:
                patch = _json(body)
                return 200, self._patch(resource, namespace, name, patch, subresource, manager)
            elif method == "PATCH":
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types"
                    f" include: {MERGE_PATCH}, {APPLY_PATCH}",
                )
        raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method: {method}")

    def _group_list(self) -> dict[str, Any]:
        groups: dict[str, list[str]] = {}
        for r in self.resources:
            if r.group:
                versions = groups.setdefault(r.group, [])
                if r.group_version not in versions:
                    versions.append(r.group_version)
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {
                    "name": name,
                    "versions": [
                        {"groupVersion": gv, "version": gv.split("/")[1]} for gv in versions
                    ],
                    "preferredVersion": {
                        "groupVersion": versions[0],
                        "version": versions[0].split("/")[1],
                    },
                }
                for name, versions in groups.items()
            ],
        }

    def _key(self, resource: Resource, namespace: str, name: str) -> tuple[str, str, str]:
        return (resource.plural, namespace if resource.namespaced else "", name)

    def _read(
        self, resource: Resource, namespace: str, name: str, subresource: str = ""
    ) -> dict[str, Any]:
        if resource.plural == "customresourcedefinitions":
            found = self.crds().get(name)
        else:
            found = self.objects.get(self._key(resource, namespace, name))
        if found is None:
            qualified = f"{resource.plural}.{resource.group}" if resource.group else resource.plural
            raise ApiError(404, "NotFound", f'{qualified} "{name}" not found')
        return copy.deepcopy(found)

    def _list(self, resource: Resource, namespace: str, selector: str | None) -> dict[str, Any]:
        wanted = dict(term.split("=", 1) for term in selector.split(",")) if selector else {}
        items = [
            copy.deepcopy(obj)
            for (plural, ns, _), obj in sorted(self.objects.items())
            if plural == resource.plural
            and (not resource.namespaced or not namespace or ns == namespace)
            and wanted.items() <= ((obj.get("metadata") or {}).get("labels") or {}).items()
        ]
        return {
            "apiVersion": resource.group_version,
            "kind": f"{resource.kind}List",
            "metadata": {"resourceVersion": str(next(self._versions))},
            "items": items,
        }

    def _check_namespace(self, resource: Resource, namespace: str) -> None:
        if resource.namespaced and ("namespaces", "", namespace) not in self.objects:
            raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found')

    def _check_identity(self, resource: Resource, namespace: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or body.get("kind") != resource.kind:
            raise ApiError(400, "BadRequest", f"expected a {resource.kind} object")
        if body.get("apiVersion") != resource.group_version:
            raise ApiError(400, "BadRequest", f"expected apiVersion {resource.group_version}")
        meta = body.setdefault("metadata", {})
        if not meta.get("name"):
            raise ApiError(422, "Invalid", f"{resource.kind}: metadata.name: Required value")
        if resource.namespaced and meta.setdefault("namespace", namespace) != namespace:
            raise ApiError(400, "BadRequest", "the namespace of the object does not match the URL")
        return meta

    def _create(self, resource, namespace, body, manager, dry_run) -> dict[str, Any]:
        meta = self._check_identity(resource, namespace, body)
        self._check_namespace(resource, namespace)
        key = self._key(resource, namespace, meta["name"])
        if key in self.objects:
            raise ApiError(
                409, "AlreadyExists", f'{resource.plural} "{meta["name"]}" already exists'
            )
        if resource.has_status:
            body.pop("status", None)
        stored = fake_ssa.update(None, body, manager, resource.has_status)
        self._new_metadata(stored)
        if not dry_run:
            self.objects[key] = stored
        return copy.deepcopy(stored)

    def _apply(self, resource, namespace, name, applied, query, force, dry_run):
        if not query.get("fieldManager"):
            raise ApiError(
                422,
                "Invalid",
                'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is'
                " required for apply patch",
            )
        meta = self._check_identity(resource, namespace, applied)
        if meta["name"] != name:
            raise ApiError(
                400,
                "BadRequest",
                f"the name of the object ({meta['name']}) does not match the name on the URL"
                f" ({name})",
            )
        self._check_namespace(resource, namespace)
        if resource.kind == "RayService":
            unknown = unknown_fields(applied, self.rayservice_schema())
            if unknown and query.get("fieldValidation") == "Strict":
                fields = ", ".join(f'unknown field "{u}"' for u in unknown)
                raise ApiError(400, "BadRequest", f"strict decoding error: {fields}")
            if self.prune_unknown_fields:
                _prune(applied, unknown)
        key = self._key(resource, namespace, name)
        live = self.objects.get(key)
        try:
            result = fake_ssa.apply(
                live, applied, query["fieldManager"], force, resource.has_status
            )
        except fake_ssa.Conflict as conflict:
            causes = [
                {
                    "type": "FieldManagerConflict",
                    "message": f'conflict with "{m}" using {conflict.api_version}',
                    "field": "." + ".".join(p),
                }
                for m, p in conflict.conflicts
            ]
            raise ApiError(409, "Conflict", conflict.message, {"causes": causes}) from None
        if live is None:
            self._new_metadata(result)
            code = 201
        else:
            self._keep_system_fields(resource, live, result)
            code = 200
        if not dry_run:
            self.objects[key] = result
        return code, copy.deepcopy(result)

    def _patch(self, resource, namespace, name, patch, subresource, manager) -> dict[str, Any]:
        current = self._read(resource, namespace, name)
        if not isinstance(patch, dict):
            raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
        if subresource == "status":
            updated = dict(current, status=_merge(current.get("status") or {}, patch.get("status")))
        else:
            updated = _merge(current, patch)
        updated = fake_ssa.update(current, updated, manager, resource.has_status, subresource)
        self._keep_system_fields(resource, current, updated, subresource)
        self.objects[self._key(resource, namespace, name)] = updated
        return copy.deepcopy(updated)

    def _new_metadata(self, obj: dict[str, Any]) -> None:
        obj["metadata"].update(
            uid=str(uuid.uuid4()),
            resourceVersion=str(next(self._versions)),
            creationTimestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            generation=1,
        )

    def _keep_system_fields(self, resource, current, updated, subresource: str = "") -> None:
        """Identity stays; only the status subresource changes status; generation counts
        changes outside metadata and status; resourceVersion any change."""
        meta = updated["metadata"]
        for name in ("name", "namespace", "uid", "creationTimestamp", "generation"):
            if name in current["metadata"]:
                meta[name] = current["metadata"][name]
        if resource.has_status and subresource != "status":
            updated.pop("status", None)
            if "status" in current:
                updated["status"] = current["status"]
        if _content(updated) != _content(current):
            meta["generation"] = current["metadata"]["generation"] + 1
        meta["resourceVersion"] = current["metadata"]["resourceVersion"]
        if updated != current:
            meta["resourceVersion"] = str(next(self._versions))


def _content(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386, written here on its own so the server does not share the client's code."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except json.JSONDecodeError as exc:
        raise ApiError(400, "BadRequest", f"the body is not JSON: {exc}") from None


def _yaml(raw: bytes) -> Any:
    try:
        return yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as exc:
        raise ApiError(400, "BadRequest", f"the body is not YAML: {exc}") from None


def _user_agent_manager(headers: dict[str, str]) -> str:
    """kube-apiserver's default field manager: the User-Agent up to its first slash."""
    return (headers.get("User-Agent") or "unknown").split("/")[0]


def _split(parts: list[str]) -> tuple[str | None, list[str]]:
    if parts[:2] == ["api", "v1"]:
        return "v1", parts[2:]
    if len(parts) >= 3 and parts[0] == "apis":
        return f"{parts[1]}/{parts[2]}", parts[3:]
    return None, []


def _route(served: list[Resource], segments: list[str]) -> tuple[Resource, str, str | None, str]:
    """(resource, namespace, name, subresource) for the segments after the group version."""
    namespace = ""
    if len(segments) >= 3 and segments[0] == "namespaces":
        namespace, segments = segments[1], segments[2:]
    plural, rest = segments[0], segments[1:]
    by_plural = {r.plural: r for r in served}
    if plural not in by_plural or len(rest) > 2 or (len(rest) == 2 and rest[1] != "status"):
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    resource = by_plural[plural]
    if resource.namespaced != bool(namespace) and (rest or not resource.namespaced):
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    subresource = rest[1] if len(rest) == 2 else ""
    if subresource and not resource.has_status:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    return resource, namespace, (rest[0] if rest else None), subresource


def _resource_list(group_version: str, served: list[Resource]) -> dict[str, Any]:
    resources = []
    for r in served:
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        resources.append(
            {
                "name": r.plural,
                "singularName": r.kind.lower(),
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": verbs,
            }
        )
        if r.has_status:
            resources.append(
                {
                    "name": f"{r.plural}/status",
                    "singularName": "",
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }


def _status_body(error: ApiError) -> dict[str, Any]:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": error.message,
        "reason": error.reason,
        "code": error.code,
    }
    if error.details:
        body["details"] = error.details
    return body


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            headers = {k: v for k, v in self.headers.items()}
            code, payload = self.server.state.handle(self.command, self.path, headers, raw)
        except ApiError as error:
            code, payload = error.code, _status_body(error)
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: FakeApiServer) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


@contextmanager
def serving(state: FakeApiServer) -> Iterator[str]:
    """Serve ``state`` on 127.0.0.1 in a thread; yields the server's URL."""
    server = _Server(state)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name="fake-apiserver",
        daemon=True,
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
