"""The test API server answers like kube-apiserver where the client code depends on it: object
semantics, server-side apply (field ownership, conflicts, dry run) and discovery."""

from __future__ import annotations

import requests
import yaml

from tests.kuberay.conftest import OVERLAYS
from tests.kuberay.fake_apiserver import RESOURCES, TOKEN, FakeApiServer, serving

AUTH = {"Authorization": f"Bearer {TOKEN}"}
NAMESPACES = "/api/v1/namespaces"
RAYSERVICES = "/apis/ray.io/v1/namespaces/ns/rayservices"
MERGE = {"Content-Type": "application/merge-patch+json"}
APPLY = {"Content-Type": "application/apply-patch+yaml"}


def rayservice(**spec) -> dict:
    return {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "x"},
            "spec": spec}  # fmt: skip


def managers(obj: dict) -> dict[str, dict]:
    return {
        f"{e['manager']}/{e['operation']}": e["fieldsV1"] for e in obj["metadata"]["managedFields"]
    }


def test_every_kind_of_every_overlay_is_served(built) -> None:
    served = {(r.group_version, r.kind) for r in RESOURCES}
    for name in ["base", *OVERLAYS]:
        kinds = {(o["apiVersion"], o["kind"]) for o in built[name]}
        assert kinds <= served, name


def test_objects_status_and_generation() -> None:
    with serving(FakeApiServer()) as url, requests.Session() as http:
        http.headers.update(AUTH)
        assert http.post(f"{url}{RAYSERVICES}", json=rayservice()).status_code == 404  # no ns
        http.post(f"{url}{NAMESPACES}", json={"apiVersion": "v1", "kind": "Namespace",
                                              "metadata": {"name": "ns"}})  # fmt: skip
        absent = http.get(f"{url}{RAYSERVICES}/x")
        assert absent.status_code == 404
        assert absent.json() | {"message": ""} == {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "", "reason": "NotFound", "code": 404,
        }  # fmt: skip
        body = rayservice(a=1, b=2) | {"status": {"forged": True}}
        created = http.post(f"{url}{RAYSERVICES}", json=body)
        assert created.status_code == 201
        assert created.json()["metadata"]["generation"] == 1
        assert "status" not in created.json()
        assert http.post(f"{url}{RAYSERVICES}", json=body).status_code == 409

        patched = http.patch(f"{url}{RAYSERVICES}/x", json={"spec": {"b": None}}, headers=MERGE)
        assert patched.json()["spec"] == {"a": 1}
        assert patched.json()["metadata"]["generation"] == 2
        strategic = {"Content-Type": "application/strategic-merge-patch+json"}
        assert http.patch(f"{url}{RAYSERVICES}/x", json={}, headers=strategic).status_code == 415

        status = http.patch(f"{url}{RAYSERVICES}/x/status", json={"status": {"ok": 1}},
                            headers=MERGE)  # fmt: skip
        assert status.json()["status"] == {"ok": 1}
        assert status.json()["metadata"]["generation"] == 2
        assert http.get(f"{url}{RAYSERVICES}").json()["items"][0]["status"] == {"ok": 1}
        assert requests.get(f"{url}{RAYSERVICES}/x", timeout=5).status_code == 401


def test_server_side_apply_owns_fields_like_kube_apiserver() -> None:
    state = FakeApiServer()
    with serving(state) as url, requests.Session() as http:
        http.headers.update(AUTH)
        http.post(f"{url}{NAMESPACES}", json={"apiVersion": "v1", "kind": "Namespace",
                                              "metadata": {"name": "ns"}})  # fmt: skip
        item = f"{url}{RAYSERVICES}/x"

        def apply(spec: dict, manager: str = "me", **params) -> requests.Response:
            text = yaml.safe_dump(rayservice(**spec))
            return http.patch(item, data=text, headers=APPLY,
                              params={"fieldManager": manager, **params})  # fmt: skip

        assert http.patch(item, data=yaml.safe_dump(rayservice()), headers=APPLY).status_code == 422
        dry = apply({"a": 1, "m": {"k": 1, "j": 2}}, dryRun="All")
        assert dry.status_code == 201 and state.get("rayservices", "ns", "x") is None
        created = apply({"a": 1, "m": {"k": 1, "j": 2}})
        assert created.status_code == 201
        assert managers(created.json()) == {
            "me/Apply": {"f:spec": {"f:a": {}, "f:m": {"f:j": {}, "f:k": {}}}}
        }
        version = created.json()["metadata"]["resourceVersion"]
        same = apply({"a": 1, "m": {"k": 1, "j": 2}})
        assert same.status_code == 200
        assert same.json()["metadata"]["resourceVersion"] == version  # a no-op writes nothing

        # Another manager changes a field of ours and adds one of its own.
        http.patch(item, json={"spec": {"a": 5, "theirs": 1}}, headers=MERGE,
                   params={"fieldManager": "kubectl-edit"})  # fmt: skip
        conflict = apply({"a": 2, "m": {"k": 1}})
        assert conflict.status_code == 409
        assert conflict.json()["reason"] == "Conflict"
        assert conflict.json()["message"] == (
            'Apply failed with 1 conflict: conflict with "kubectl-edit" using ray.io/v1: .spec.a'
        )
        assert state.get("rayservices", "ns", "x")["spec"]["a"] == 5  # nothing changed

        forced = apply({"a": 2, "m": {"k": 1}}, force="true").json()
        # Ours: a taken back, m.j dropped (no longer applied); theirs: kept, still theirs.
        assert forced["spec"] == {"a": 2, "m": {"k": 1}, "theirs": 1}
        assert managers(forced) == {
            "me/Apply": {"f:spec": {"f:a": {}, "f:m": {"f:k": {}}}},
            "kubectl-edit/Update": {"f:spec": {"f:theirs": {}}},
        }
        assert forced["metadata"]["generation"] == 3
        # A field both apply with the same value is shared, and stays while one still applies it.
        apply({"theirs": 1}, manager="other")
        apply({"a": 2})
        assert state.get("rayservices", "ns", "x")["spec"] == {"a": 2, "theirs": 1}


def test_discovery_serves_what_the_dynamic_client_reads() -> None:
    with serving(FakeApiServer(missing_groups=("monitoring.googleapis.com",))) as url:
        get = lambda path: requests.get(f"{url}{path}", headers=AUTH, timeout=5)  # noqa: E731
        assert get("/version").json()["gitVersion"].startswith("v1.")
        assert get("/api").json()["versions"] == ["v1"]
        groups = {g["name"] for g in get("/apis").json()["groups"]}
        assert {"ray.io", "policy", "networking.k8s.io", "gateway.networking.k8s.io"} <= groups
        assert "monitoring.googleapis.com" not in groups
        assert get("/apis/monitoring.googleapis.com/v1").status_code == 404
        names = {r["name"] for r in get("/apis/ray.io/v1").json()["resources"]}
        assert names == {"rayservices", "rayservices/status"}
        core = {r["name"] for r in get("/api/v1").json()["resources"]}
        assert {"namespaces", "serviceaccounts", "pods", "pods/status"} <= core


def test_without_the_crd_the_group_version_is_not_found() -> None:
    with serving(FakeApiServer(crd_installed=False)) as url:
        assert requests.get(f"{url}/apis/ray.io/v1", headers=AUTH, timeout=5).status_code == 404
        core = requests.get(f"{url}/api/v1/namespaces", headers=AUTH, timeout=5)
        assert core.status_code == 200
