"""Apply and status through the real ``kubernetes`` client, against a real HTTP API server."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from serve_app import cli
from serve_app.kuberay import cluster as kube
from serve_app.kuberay.cluster import ClusterError
from serve_app.kuberay.status import describe
from tests.helpers import free_port
from tests.kuberay.conftest import ROOT, Cluster, the_rayservice, write_kubeconfig
from tests.kuberay.fake_operator import FakeOperator

NAMESPACE = "serve-app"


@pytest.fixture
def dev(built) -> list[dict[str, Any]]:
    """The dev overlay's objects (a fresh copy per test)."""
    return copy.deepcopy(built["dev"])


def connect(cluster: Cluster):
    return kube.connect(str(cluster.kubeconfig))


def test_apply_creates_the_objects_then_changes_nothing(cluster: Cluster, dev) -> None:
    api = connect(cluster)
    kube.require_rayservice_crd(api)
    assert kube.apply_objects(api, dev) == [
        "namespace/serve-app created",
        "serviceaccount/serve-app created",
        "rayservice/serve-app created",
    ]
    stored = cluster.state.get("rayservices", NAMESPACE, "serve-app")
    assert stored["spec"] == the_rayservice(dev)["spec"]
    assert stored["metadata"]["generation"] == 1
    assert cluster.state.get("serviceaccounts", NAMESPACE, "serve-app") is not None

    assert kube.apply_objects(api, dev) == [
        "namespace/serve-app unchanged",
        "serviceaccount/serve-app unchanged",
        "rayservice/serve-app unchanged",
    ]
    assert cluster.state.get("rayservices", NAMESPACE, "serve-app")["metadata"]["generation"] == 1


def test_apply_patches_in_place_and_removes_only_what_it_had_applied(cluster, dev) -> None:
    api = connect(cluster)
    kube.apply_objects(api, dev)
    # Another actor (a person with kubectl, or a defaulting webhook) adds a field of its own.
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        "ray.io", "v1", NAMESPACE, "rayservices", "serve-app",
        {"spec": {"serviceUnhealthySecondThreshold": 900}},
    )  # fmt: skip

    rayservice = the_rayservice(dev)
    serve_config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    serve_config["applications"][0]["args"]["models"][0]["batching"]["max_batch_size"] = 64
    rayservice["spec"]["serveConfigV2"] = yaml.safe_dump(serve_config)
    del rayservice["spec"]["rayClusterConfig"]["autoscalerOptions"]
    (account,) = [o for o in dev if o["kind"] == "ServiceAccount"]
    account["metadata"]["annotations"] = {"iam.gke.io/gcp-service-account": "sa@p.iam"}

    assert kube.apply_objects(api, dev) == [
        "namespace/serve-app unchanged",
        "serviceaccount/serve-app configured",
        "rayservice/serve-app configured",
    ]
    stored_account = cluster.state.get("serviceaccounts", NAMESPACE, "serve-app")
    assert stored_account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"] == "sa@p.iam"
    stored = cluster.state.get("rayservices", NAMESPACE, "serve-app")
    assert stored["metadata"]["generation"] == 3
    assert stored["spec"]["serveConfigV2"] == rayservice["spec"]["serveConfigV2"]
    assert "autoscalerOptions" not in stored["spec"]["rayClusterConfig"]
    assert stored["spec"]["serviceUnhealthySecondThreshold"] == 900
    patches = [r for r in cluster.state.requests if r[0] == "PATCH"]
    assert patches[-1] == ("PATCH", f"/apis/ray.io/v1/namespaces/{NAMESPACE}/rayservices/serve-app")


def test_apply_waits_until_ready_and_prints_the_serve_application_status(cluster, dev) -> None:
    api = connect(cluster)
    kube.apply_objects(api, dev)
    operator = FakeOperator(cluster.kubeconfig, NAMESPACE)
    operator.start()
    progress: list[str] = []
    try:
        ready = kube.wait_until_ready(
            api, "serve-app", NAMESPACE, timeout_s=20, poll_s=0.02, progress=progress.append
        )
    finally:
        operator.stop()
    assert ready["status"]["observedGeneration"] == 1
    text = describe(ready)
    assert text.splitlines()[0].startswith("RayService serve-app/serve-app: ready")
    assert "application models: RUNNING" in text
    for deployment in ("digits", "minilm", "tiny-gpt2", "Ingress"):
        assert f"      {deployment}: HEALTHY" in text
    assert progress and all(line.startswith("waiting: ") for line in progress)


def test_a_failed_deployment_is_reported_with_its_message(cluster, dev) -> None:
    api = connect(cluster)
    kube.apply_objects(api, dev)
    operator = FakeOperator(cluster.kubeconfig, NAMESPACE, outcome="DEPLOY_FAILED")
    operator.start()
    try:
        with pytest.raises(ClusterError, match="DEPLOY_FAILED: model 'digits' failed to load"):
            kube.wait_until_ready(api, "serve-app", NAMESPACE, timeout_s=20, poll_s=0.02)
    finally:
        operator.stop()


def test_no_operator_means_no_status_and_a_clear_timeout(cluster, dev) -> None:
    api = connect(cluster)
    kube.apply_objects(api, dev)
    with pytest.raises(ClusterError) as caught:
        kube.wait_until_ready(api, "serve-app", NAMESPACE, timeout_s=0.3, poll_s=0.05)
    assert "has no status after 0.3 s: the KubeRay operator is not running" in str(caught.value)


def test_missing_crd_is_named(cluster_without_kuberay: Cluster, dev) -> None:
    api = connect(cluster_without_kuberay)
    with pytest.raises(ClusterError, match=r"RayService CRD \(rayservices.ray.io/v1\) is not"):
        kube.require_rayservice_crd(api)
    # Without the check, the API server's own 404 still comes back as a ClusterError.
    with pytest.raises(ClusterError, match="answered 404"):
        kube.apply_objects(api, [the_rayservice(dev)])


def test_status_of_an_absent_rayservice_says_how_to_create_it(cluster) -> None:
    with pytest.raises(ClusterError, match="'serve-app' not found in namespace 'serve-app'"):
        kube.get_rayservice(connect(cluster), "serve-app", NAMESPACE)


def test_no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ClusterError, match="no Kubernetes credentials: no kubeconfig at"):
        kube.connect()
    with pytest.raises(ClusterError, match=r"kubeconfig .*elsewhere not found"):
        kube.connect(str(tmp_path / "elsewhere"))


def test_rejected_credentials(cluster: Cluster, tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "stale", cluster.url, token="expired")
    with pytest.raises(ClusterError, match=r"rejected the credentials \(401 Unauthorized\)"):
        kube.require_rayservice_crd(kube.connect(str(kubeconfig)))


def test_unreachable_api_server(tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{free_port()}")
    api = kube.connect(str(kubeconfig))
    api.configuration.retries = 0
    with pytest.raises(
        ClusterError, match=r"cannot reach the Kubernetes API at http://127\.0\.0\.1"
    ):
        kube.require_rayservice_crd(api)


def test_unsupported_kinds_are_refused_before_anything_is_applied(cluster, dev) -> None:
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
    with pytest.raises(ClusterError, match=r"cannot apply ConfigMap \(v1\)"):
        kube.apply_objects(connect(cluster), [*dev, config_map])
    assert cluster.state.objects == {}


def test_cli_apply_overlay_then_status(cluster, capsys, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # the CLI's defaults are relative to the repository root
    operator = FakeOperator(cluster.kubeconfig, NAMESPACE)
    operator.start()
    try:
        code = cli.main(["kuberay", "apply", "-k", "kuberay/overlays/dev",
                         "--kubeconfig", str(cluster.kubeconfig), "--poll-s", "0.02"])  # fmt: skip
    finally:
        operator.stop()
    out = capsys.readouterr().out
    assert code == 0, out
    assert "rayservice/serve-app created" in out
    assert "application models: RUNNING" in out

    code = cli.main(["kuberay", "status", "--kubeconfig", str(cluster.kubeconfig)])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("RayService serve-app/serve-app: ready")
    assert "digits: HEALTHY" in out


def test_cli_reports_a_missing_crd_without_a_traceback(cluster_without_kuberay) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "serve_app.cli", "kuberay", "apply", "-f", "-",
         "--kubeconfig", str(cluster_without_kuberay.kubeconfig)],
        input=yaml.safe_dump_all([{"apiVersion": "ray.io/v1", "kind": "RayService",
                                   "metadata": {"name": "x"}, "spec": {}}]),
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("error: the RayService CRD (rayservices.ray.io/v1)")
    assert "Traceback" not in result.stderr
    assert cluster_without_kuberay.state.objects == {}
