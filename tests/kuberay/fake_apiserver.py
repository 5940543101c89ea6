"""A small, real Kubernetes API server for tests: HTTP on 127.0.0.1, objects kept in memory.

It speaks the subset that ``serve_app.kuberay.cluster`` uses, the way kube-apiserver does:
discovery of an API group version (``GET /apis/ray.io/v1``; 404 when the CRD is not
installed), and for namespaces, service accounts and RayServices: GET (404 with a ``Status``
body when absent), list, POST (201; 409 when it exists), PATCH with a JSON merge patch (415 for
other patch types), and the ``status`` subresource (the only way to change ``status``; writes to
the main resource leave it alone, and ``metadata.generation`` counts spec changes only).
Requests need the bearer token, or get 401.
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "test-token"
MERGE_PATCH = "application/merge-patch+json"


@dataclass(frozen=True)
class Resource:
    """One served resource type."""

    group_version: str  # "v1" for the core group
    plural: str
    kind: str
    namespaced: bool
    has_status: bool


CORE = [
    Resource("v1", "namespaces", "Namespace", namespaced=False, has_status=True),
    Resource("v1", "serviceaccounts", "ServiceAccount", namespaced=True, has_status=False),
]
RAYSERVICES = Resource("ray.io/v1", "rayservices", "RayService", namespaced=True, has_status=True)


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


@dataclass
class FakeApiServer:
    """The server's state; ``crd_installed=False`` serves no ``ray.io`` group at all."""

    crd_installed: bool = True
    objects: dict[tuple[str, str, str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _versions: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def resources(self) -> list[Resource]:
        return CORE + ([RAYSERVICES] if self.crd_installed else [])

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A stored object (a copy), for assertions."""
        with self.lock:
            found = self.objects.get((plural, namespace, name))
            return copy.deepcopy(found)

    # Request handling; ``segments`` is the path split on "/" without the API prefix.
    def handle(self, method: str, path: str, content_type: str, body: Any) -> tuple[int, Any]:
        self.requests.append((method, path))
        group_version, segments = _split(path)
        if group_version is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        served = [r for r in self.resources if r.group_version == group_version]
        if not served:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not segments and method == "GET":
            return 200, _resource_list(group_version, served)
        resource, namespace, name, subresource = _route(served, segments)
        with self.lock:
            if name is None:
                if method == "GET":
                    return 200, self._list(resource, namespace)
                if method == "POST":
                    return 201, self._create(resource, namespace, body)
            elif method == "GET":
                return 200, self._read(resource, namespace, name)
            elif method == "PATCH":
                if content_type != MERGE_PATCH:
                    raise ApiError(
                        415,
                        "UnsupportedMediaType",
                        f"the body of the request was in"
                        f" an unknown format - accepted media types include: {MERGE_PATCH}",
                    )
                return 200, self._patch(resource, namespace, name, body, subresource)
        raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method: {method}")

    def _read(self, resource: Resource, namespace: str, name: str) -> dict[str, Any]:
        found = self.objects.get((resource.plural, namespace, name))
        if found is None:
            group = resource.group_version.split("/")[0] if "/" in resource.group_version else ""
            qualified = f"{resource.plural}.{group}" if group else resource.plural
            raise ApiError(404, "NotFound", f'{qualified} "{name}" not found')
        return copy.deepcopy(found)

    def _list(self, resource: Resource, namespace: str) -> dict[str, Any]:
        items = [
            copy.deepcopy(obj)
            for (plural, ns, _), obj in sorted(self.objects.items())
            if plural == resource.plural and (not resource.namespaced or ns == namespace)
        ]
        return {
            "apiVersion": resource.group_version,
            "kind": f"{resource.kind}List",
            "metadata": {"resourceVersion": str(next(self._versions))},
            "items": items,
        }

    def _create(self, resource: Resource, namespace: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or body.get("kind") != resource.kind:
            raise ApiError(400, "BadRequest", f"expected a {resource.kind} object")
        meta = body.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            raise ApiError(422, "Invalid", f"{resource.kind}: metadata.name: Required value")
        if resource.namespaced and meta.setdefault("namespace", namespace) != namespace:
            raise ApiError(400, "BadRequest", "the namespace of the object does not match the URL")
        key = (resource.plural, namespace if resource.namespaced else "", name)
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f'{resource.plural} "{name}" already exists')
        if resource.has_status:
            body.pop("status", None)
        meta.update(
            uid=str(uuid.uuid4()),
            resourceVersion=str(next(self._versions)),
            creationTimestamp=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            generation=1,
        )
        self.objects[key] = body
        return copy.deepcopy(body)

    def _patch(self, resource, namespace, name, patch, subresource) -> dict[str, Any]:
        current = self._read(resource, namespace, name)
        if not isinstance(patch, dict):
            raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
        if subresource == "status":
            updated = dict(current, status=_merge(current.get("status") or {}, patch.get("status")))
        else:
            updated = _merge(current, patch)
            if resource.has_status:  # the main resource never changes status
                updated.pop("status", None)
                if "status" in current:
                    updated["status"] = current["status"]
            for immutable in ("name", "namespace", "uid", "creationTimestamp", "generation"):
                if immutable in current["metadata"]:
                    updated["metadata"][immutable] = current["metadata"][immutable]
            if updated.get("spec") != current.get("spec"):
                updated["metadata"]["generation"] = current["metadata"]["generation"] + 1
        updated["metadata"]["resourceVersion"] = str(next(self._versions))
        self.objects[(resource.plural, namespace if resource.namespaced else "", name)] = updated
        return copy.deepcopy(updated)


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


def _split(path: str) -> tuple[str | None, list[str]]:
    parts = [p for p in path.split("?")[0].split("/") if p]
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
    if resource.namespaced != bool(namespace):
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
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": error.message,
        "reason": error.reason,
        "code": error.code,
    }


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            try:
                body = json.loads(raw) if raw else None
            except json.JSONDecodeError as exc:
                raise ApiError(400, "BadRequest", f"the body is not JSON: {exc}") from None
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            code, payload = self.server.state.handle(self.command, self.path, content_type, body)
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
