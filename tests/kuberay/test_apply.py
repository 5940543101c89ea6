"""Apply and status through the real ``kubernetes`` client (its dynamic client for server-side
apply), against a real HTTP API server, with the real CLI."""

from __future__ import annotations

import copy
import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from serve_app import cli
from serve_app.kuberay import cluster as kube
from serve_app.kuberay.cluster import FIELD_MANAGER, ClusterError
from serve_app.kuberay.status import describe
from tests.helpers import free_port
from tests.kuberay.conftest import ROOT, Cluster, the_rayservice, write_kubeconfig
from tests.kuberay.fake_operator import FakeOperator

NAMESPACE = "serve-app"
MODELS = ["digits", "minilm", "tiny-gpt2"]  # the default fleet of serve_config.yaml


@pytest.fixture
def dev(built) -> list[dict[str, Any]]:
    """The dev overlay's objects (a fresh copy per test)."""
    return copy.deepcopy(built["dev"])


def connect(cluster: Cluster):
    return kube.connect(str(cluster.kubeconfig))


def actions(applied: list[kube.Applied]) -> dict[str, str]:
    return {a.label: a.action for a in applied}


def kubectl_edit(api, body: dict[str, Any]) -> None:
    """A person changing the RayService with kubectl edit (an update by another manager)."""
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        "ray.io", "v1", NAMESPACE, "rayservices", "serve-app", body, field_manager="kubectl-edit"
    )


def write_manifests(path: Path, objects: list[dict[str, Any]]) -> str:
    path.write_text(yaml.safe_dump_all(objects))
    return str(path)


def test_apply_creates_every_kind_then_changes_nothing(cluster: Cluster, dev) -> None:
    api = connect(cluster)
    kube.require_rayservice_crd(api)
    applied = kube.apply_objects(api, dev)
    assert applied[0].label == "namespace/serve-app"  # first: the others live in it
    assert set(actions(applied).values()) == {"created"}
    assert {a.kind for a in applied} == {o["kind"] for o in dev}
    assert len(cluster.state.objects) == len(dev)
    stored = cluster.state.get("rayservices", NAMESPACE, "serve-app")
    assert stored["spec"] == the_rayservice(dev)["spec"]
    assert stored["metadata"]["generation"] == 1
    (entry,) = stored["metadata"]["managedFields"]
    assert (entry["manager"], entry["operation"]) == (FIELD_MANAGER, "Apply")
    policy = cluster.state.get("networkpolicies", NAMESPACE, "serve-app-ray")
    assert policy["spec"] == next(o for o in dev if o["kind"] == "NetworkPolicy")["spec"]

    versions = {k: o["metadata"]["resourceVersion"] for k, o in cluster.state.objects.items()}
    assert set(actions(kube.apply_objects(api, dev)).values()) == {"unchanged"}
    assert versions == {
        k: o["metadata"]["resourceVersion"] for k, o in cluster.state.objects.items()
    }


def test_apply_removes_what_it_no_longer_applies_and_keeps_what_others_own(cluster, dev) -> None:
    api = connect(cluster)
    kube.apply_objects(api, dev)
    kubectl_edit(api, {"spec": {"serviceUnhealthySecondThreshold": 900}})

    rayservice = the_rayservice(dev)
    serve_config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    (digits,) = [a for a in serve_config["applications"] if a["name"] == "digits"]
    digits["args"]["batching"]["max_batch_size"] = 64
    rayservice["spec"]["serveConfigV2"] = yaml.safe_dump(serve_config)
    del rayservice["spec"]["rayClusterConfig"]["autoscalerOptions"]["idleTimeoutSeconds"]
    (account,) = [o for o in dev if o["kind"] == "ServiceAccount"]
    account["metadata"]["annotations"] = {"iam.gke.io/gcp-service-account": "sa@p.iam"}

    changed = {k: v for k, v in actions(kube.apply_objects(api, dev)).items() if v != "unchanged"}
    assert changed == {
        "serviceaccount/serve-app": "configured",
        "rayservice/serve-app": "configured",
    }
    stored_account = cluster.state.get("serviceaccounts", NAMESPACE, "serve-app")
    assert stored_account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"] == "sa@p.iam"
    stored = cluster.state.get("rayservices", NAMESPACE, "serve-app")
    assert stored["metadata"]["generation"] == 3
    assert stored["spec"]["serveConfigV2"] == rayservice["spec"]["serveConfigV2"]
    assert "idleTimeoutSeconds" not in stored["spec"]["rayClusterConfig"]["autoscalerOptions"]
    assert stored["spec"]["serviceUnhealthySecondThreshold"] == 900  # theirs, kept
    patches = [r for r in cluster.state.requests if r[0] == "PATCH"]
    assert patches[-1] == ("PATCH", f"/apis/ray.io/v1/namespaces/{NAMESPACE}/rayservices/serve-app")


def test_a_conflict_names_the_fields_and_is_taken_over_only_when_forced(cluster, dev) -> None:
    api = connect(cluster)
    kube.apply_objects(api, dev)
    kubectl_edit(api, {"spec": {"rayClusterConfig": {"enableInTreeAutoscaling": False}}})

    with pytest.raises(ClusterError) as caught:
        kube.apply_objects(api, dev)
    message = str(caught.value)
    assert message.startswith("rayservice/serve-app: Apply failed with 1 conflict")
    assert (
        '"kubectl-edit"' in message and ".spec.rayClusterConfig.enableInTreeAutoscaling" in message
    )
    assert "--force-conflicts" in message and "--diff" in message
    stored = cluster.state.get("rayservices", NAMESPACE, "serve-app")
    assert stored["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is False

    applied = actions(kube.apply_objects(api, dev, force_conflicts=True))
    assert applied["rayservice/serve-app"] == "configured"
    stored = cluster.state.get("rayservices", NAMESPACE, "serve-app")
    assert stored["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    assert {e["manager"] for e in stored["metadata"]["managedFields"]} == {FIELD_MANAGER}


def test_dry_run_stores_nothing(cluster, dev) -> None:
    api = connect(cluster)
    # On an empty cluster everything would be created (the namespace first, so the server
    # cannot check the objects inside it yet).
    assert set(actions(kube.apply_objects(api, dev, dry_run=True)).values()) == {"created"}
    assert cluster.state.objects == {}

    kube.apply_objects(api, dev)
    the_rayservice(dev)["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = 3
    before = copy.deepcopy(cluster.state.objects)
    applied = kube.apply_objects(api, dev, dry_run=True)
    assert {k: v for k, v in actions(applied).items() if v != "unchanged"} == {
        "rayservice/serve-app": "configured"
    }
    assert cluster.state.objects == before


def test_cli_diff_shows_what_would_change_and_dry_run_says_what_would_happen(
    cluster, dev, tmp_path, capsys
) -> None:
    kube.apply_objects(connect(cluster), dev)
    the_rayservice(dev)["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = 3
    manifests = write_manifests(tmp_path / "dev.yaml", dev)
    connection = ["--kubeconfig", str(cluster.kubeconfig)]

    assert cli.main(["kuberay", "apply", "-f", manifests, "--diff", *connection]) == 0
    out = capsys.readouterr().out
    assert out.startswith("--- live/rayservice/serve-app/serve-app\n")
    assert "+++ applied/rayservice/serve-app/serve-app\n" in out
    changed = [line for line in out.splitlines() if line[:1] in "+-" and line[:3] not in "+++---"]
    assert changed == ["-      maxReplicas: 2", "+      maxReplicas: 3"]

    assert cli.main(["kuberay", "apply", "-f", manifests, "--dry-run", *connection]) == 0
    out = capsys.readouterr().out
    assert "rayservice/serve-app configured (server dry run)" in out
    assert "networkpolicy/serve-app-ray unchanged (server dry run)" in out
    assert "waiting" not in out
    stored = cluster.state.get("rayservices", NAMESPACE, "serve-app")
    assert stored["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] == 2

    kube.apply_objects(connect(cluster), dev)
    assert cli.main(["kuberay", "apply", "-f", manifests, "--diff", *connection]) == 0
    assert capsys.readouterr().out == "no changes\n"


def test_kinds_the_cluster_does_not_serve_are_named_before_anything_is_applied(
    tmp_path, dev
) -> None:
    from tests.kuberay.fake_apiserver import FakeApiServer, serving

    state = FakeApiServer(missing_groups=("monitoring.googleapis.com",))
    with serving(state) as url:
        api = kube.connect(str(write_kubeconfig(tmp_path / "kubeconfig", url)))
        with pytest.raises(ClusterError) as caught:
            kube.apply_objects(api, dev)
    message = str(caught.value)
    assert "does not serve PodMonitoring (monitoring.googleapis.com/v1); nothing was applied" in (
        message
    )
    assert "--enable-managed-prometheus" in message
    assert state.objects == {}


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
    # One Serve application per model beside the ingress's, each with its deployment.
    for app, deployment in [("ingress", "Ingress"), *((m, m) for m in MODELS)]:
        assert f"    application {app}: RUNNING\n      {deployment}: HEALTHY\n" in text + "\n"
    assert progress
    assert all(re.match(r"\[\s*\d+s\] waiting for: ", line) for line in progress)


def test_a_long_wait_says_how_long_and_which_pods_it_waits_for(cluster, dev) -> None:
    api = connect(cluster)
    kube.apply_objects(api, dev)
    ray_cluster = "serve-app-raycluster-abcde"
    custom = client.CustomObjectsApi(api)
    custom.patch_namespaced_custom_object_status(
        "ray.io", "v1", NAMESPACE, "rayservices", "serve-app",
        {"status": {"observedGeneration": 1, "conditions": [
            {"type": "Ready", "status": "False", "reason": "Initializing"}],
            "activeServiceStatus": {"rayClusterName": ray_cluster}}},
    )  # fmt: skip
    core = client.CoreV1Api(api)
    pod = f"{ray_cluster}-gpu-l4-worker-x7k2p"
    core.create_namespaced_pod(NAMESPACE, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "labels": {"ray.io/cluster": ray_cluster}},
        "spec": {"containers": [{"name": "ray-worker", "image": "x"}]}})  # fmt: skip
    message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    core.patch_namespaced_pod_status(pod, NAMESPACE, {"status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": message}]}}, _content_type="application/merge-patch+json")  # fmt: skip

    progress: list[str] = []
    with pytest.raises(ClusterError, match=r"is not ready after 0\.2 s: Initializing"):
        kube.wait_until_ready(api, "serve-app", NAMESPACE, 0.2, 0.02, progress.append)
    assert progress[0].splitlines() == [
        "[    0s] waiting for: Initializing; no application is running yet",
        f"         pod {pod}: Pending, Unschedulable: {message}",
    ]


def test_a_failed_deployment_is_reported_with_its_message(cluster, dev) -> None:
    api = connect(cluster)
    kube.apply_objects(api, dev)
    operator = FakeOperator(cluster.kubeconfig, NAMESPACE, outcome="DEPLOY_FAILED")
    operator.start()
    try:
        with pytest.raises(
            ClusterError,
            match="application 'digits' is DEPLOY_FAILED: model 'digits' failed to load",
        ):
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
    # Without the check, apply still names the kind and refuses before applying anything.
    with pytest.raises(ClusterError, match=r"does not serve RayService \(ray.io/v1\)"):
        kube.apply_objects(api, dev)
    assert cluster_without_kuberay.state.objects == {}


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


def test_rejected_credentials(cluster: Cluster, tmp_path: Path, dev) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "stale", cluster.url, token="expired")
    api = kube.connect(str(kubeconfig))
    with pytest.raises(ClusterError, match=r"rejected the credentials \(401 Unauthorized\)"):
        kube.require_rayservice_crd(api)
    with pytest.raises(ClusterError, match=r"rejected the credentials \(401 Unauthorized\)"):
        kube.apply_objects(api, dev)  # discovery is the first request


def test_unreachable_api_server(tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{free_port()}")
    api = kube.connect(str(kubeconfig))
    api.configuration.retries = 0
    with pytest.raises(
        ClusterError, match=r"cannot reach the Kubernetes API at http://127\.0\.0\.1"
    ):
        kube.require_rayservice_crd(api)


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
    assert "networkpolicy/serve-app-ray created" in out
    assert "application ingress: RUNNING" in out
    assert "application digits: RUNNING" in out

    code = cli.main(["kuberay", "status", "--kubeconfig", str(cluster.kubeconfig)])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("RayService serve-app/serve-app: ready")
    assert "digits: HEALTHY" in out

    code = cli.main(["kuberay", "status", "-o", "json", "--kubeconfig", str(cluster.kubeconfig)])
    status = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (status["ready"], status["phase"], status["name"]) == (True, "ready", "serve-app")
    apps = status["clusters"]["active"]["applications"]
    assert {name: app["status"] for name, app in apps.items()} == dict.fromkeys(
        ["ingress", *MODELS], "RUNNING"
    )
    assert {name: list(app["deployments"]) for name, app in apps.items()} == {
        "ingress": ["Ingress"],
        **{m: [m] for m in MODELS},
    }


def test_cli_status_exits_non_zero_unless_ready(cluster, dev, capsys) -> None:
    connection = ["--kubeconfig", str(cluster.kubeconfig)]
    assert cli.main(["kuberay", "status", *connection]) == 1  # absent: an error
    assert "not found in namespace" in capsys.readouterr().err
    kube.apply_objects(connect(cluster), dev)
    assert cli.main(["kuberay", "status", "-o", "json", *connection]) == cli.NOT_READY
    status = json.loads(capsys.readouterr().out)
    assert (status["ready"], status["phase"]) == (False, "no-status")
    assert cli.main(["kuberay", "status", *connection]) == cli.NOT_READY
    assert "serve-app/serve-app: no-status" in capsys.readouterr().out


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


def test_ctrl_c_while_waiting_exits_without_a_traceback(cluster, dev, tmp_path) -> None:
    manifests = write_manifests(tmp_path / "dev.yaml", dev)
    process = subprocess.Popen(
        [sys.executable, "-m", "serve_app.cli", "kuberay", "apply", "-f", manifests,
         "--kubeconfig", str(cluster.kubeconfig), "--poll-s", "0.05", "--wait-s", "600"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lines = []
        for line in process.stdout:  # no operator: it waits until interrupted
            lines.append(line)
            if "waiting for:" in line:
                process.send_signal(signal.SIGINT)
                break
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == cli.INTERRUPTED, "".join(lines) + out + err
    assert "rayservice/serve-app created" in "".join(lines)
    assert "interrupted: stopped waiting; the RayService keeps rolling out" in err
    assert "Traceback" not in err
