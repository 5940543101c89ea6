"""The test API server answers like kube-apiserver where the client code depends on it."""

from __future__ import annotations

import requests

from tests.kuberay.fake_apiserver import TOKEN, FakeApiServer, serving

AUTH = {"Authorization": f"Bearer {TOKEN}"}
RAYSERVICES = "/apis/ray.io/v1/namespaces/ns/rayservices"


def test_the_api_server_semantics_the_client_relies_on() -> None:
    with serving(FakeApiServer()) as url, requests.Session() as http:
        http.headers.update(AUTH)
        absent = http.get(f"{url}{RAYSERVICES}/x")
        assert absent.status_code == 404
        assert absent.json() | {"message": ""} == {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "", "reason": "NotFound", "code": 404,
        }  # fmt: skip
        body = {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "x"},
                "spec": {"a": 1, "b": 2}, "status": {"forged": True}}  # fmt: skip
        created = http.post(f"{url}{RAYSERVICES}", json=body)
        assert created.status_code == 201
        assert created.json()["metadata"]["generation"] == 1
        assert "status" not in created.json()
        assert http.post(f"{url}{RAYSERVICES}", json=body).status_code == 409

        merge = {"Content-Type": "application/merge-patch+json"}
        patched = http.patch(f"{url}{RAYSERVICES}/x", json={"spec": {"b": None}}, headers=merge)
        assert patched.json()["spec"] == {"a": 1}
        assert patched.json()["metadata"]["generation"] == 2
        strategic = {"Content-Type": "application/strategic-merge-patch+json"}
        assert http.patch(f"{url}{RAYSERVICES}/x", json={}, headers=strategic).status_code == 415

        status = http.patch(f"{url}{RAYSERVICES}/x/status", json={"status": {"ok": 1}},
                            headers=merge)  # fmt: skip
        assert status.json()["status"] == {"ok": 1}
        assert status.json()["metadata"]["generation"] == 2
        assert http.get(f"{url}{RAYSERVICES}").json()["items"][0]["status"] == {"ok": 1}
        assert requests.get(f"{url}{RAYSERVICES}/x", timeout=5).status_code == 401


def test_without_the_crd_the_group_version_is_not_found() -> None:
    with serving(FakeApiServer(crd_installed=False)) as url:
        assert requests.get(f"{url}/apis/ray.io/v1", headers=AUTH, timeout=5).status_code == 404
        core = requests.get(f"{url}/api/v1/namespaces", headers=AUTH, timeout=5)
        assert core.status_code == 200
