"""Strict apply: a RayService field the cluster's CRD does not know is an error, not dropped.

Against the fake API server (a real HTTP server, the real ``kubernetes`` client) holding
KubeRay v1.7.0's RayService CRD (``tests/data/kuberay/``), or that CRD with the fields an
older KubeRay lacks taken out: ``authOptions`` and the head/worker group ``labels``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.dynamic import DynamicClient

from serve_app import cli
from serve_app.kuberay import cluster as kube
from serve_app.kuberay.cluster import FIELD_MANAGER, ClusterError
from tests.kuberay.conftest import Cluster, the_rayservice, write_kubeconfig
from tests.kuberay.fake_apiserver import FakeApiServer, kuberay_rayservice_crd, serving
from tests.kuberay.test_apply import NAMESPACE, write_manifests


def older_crd() -> dict[str, Any]:
    """KubeRay v1.7.0's RayService CRD without authOptions and the group labels."""
    crd = copy.deepcopy(kuberay_rayservice_crd())
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    config = v1["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    config = config["rayClusterConfig"]["properties"]
    del config["authOptions"]
    del config["headGroupSpec"]["properties"]["labels"]
    del config["workerGroupSpecs"]["items"]["properties"]["labels"]
    return crd


@pytest.fixture
def old_cluster(tmp_path: Path) -> Iterator[Cluster]:
    state = FakeApiServer(rayservice_crd=older_crd(), prune_unknown_fields=True)
    with serving(state) as url:
        yield Cluster(state, url, write_kubeconfig(tmp_path / "kubeconfig", url))


@pytest.fixture
def dev(built) -> list[dict[str, Any]]:
    return copy.deepcopy(built["dev"])


def test_the_current_crd_knows_every_field_the_manifests_use(cluster, dev) -> None:
    api = kube.connect(str(cluster.kubeconfig))
    kube.require_rayservice_fields(api)
    config = the_rayservice(dev)["spec"]["rayClusterConfig"]
    assert config["authOptions"] and config["workerGroupSpecs"][0]["labels"]  # they are used
    kube.apply_objects(api, dev)
    stored = cluster.state.get("rayservices", NAMESPACE, "serve-app")
    assert stored["spec"]["rayClusterConfig"]["authOptions"] == config["authOptions"]


def test_an_older_crd_is_named_before_anything_is_applied(old_cluster, dev, tmp_path, capsys):
    manifests = write_manifests(tmp_path / "dev.yaml", dev)
    code = cli.main(
        ["kuberay", "apply", "-f", manifests, "--kubeconfig", str(old_cluster.kubeconfig)]
    )
    err = capsys.readouterr().err
    assert code != 0
    for path in kube.REQUIRED_RAYSERVICE_FIELDS:
        assert path in err, err
    assert "Upgrade the KubeRay operator" in err
    assert old_cluster.state.get("rayservices", NAMESPACE, "serve-app") is None
    assert old_cluster.state.get("namespaces", "", NAMESPACE) is None  # nothing applied


def test_the_apply_itself_is_strict(old_cluster, dev) -> None:
    # Past the CRD check (e.g. credentials that may not read CRDs), the server refuses.
    api = kube.connect(str(old_cluster.kubeconfig))
    with pytest.raises(ClusterError, match=r'unknown field "spec\.rayClusterConfig\.authOptions"'):
        kube.apply_objects(api, dev)
    assert old_cluster.state.get("rayservices", NAMESPACE, "serve-app") is None


def test_without_strict_validation_the_same_server_drops_the_field(old_cluster, dev) -> None:
    """What `apply` did before: the API server's default keeps quiet and drops the token."""
    api = kube.connect(str(old_cluster.kubeconfig))
    kube.apply_objects(api, [o for o in dev if o["kind"] == "Namespace"])
    dynamic = DynamicClient(api)
    rayservice = the_rayservice(dev)
    resource = dynamic.resources.get(api_version="ray.io/v1", kind="RayService")
    dynamic.server_side_apply(
        resource, body=rayservice, namespace=NAMESPACE, field_manager=FIELD_MANAGER
    )
    stored = old_cluster.state.get("rayservices", NAMESPACE, "serve-app")
    assert "authOptions" not in stored["spec"]["rayClusterConfig"]
