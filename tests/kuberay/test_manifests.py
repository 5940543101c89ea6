"""The kuberay/ manifests, as the real kustomize renders them: valid for KubeRay's CRDs, for
Kubernetes and for the other CRDs they use, shaped for GKE, pinned to immutable images, and
carrying exactly the fleet of serve_config.yaml (plus placement)."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.config import parse_app_config
from serve_app.fast_path import FAST_PATH_ENV, TRANSPORT_ENV
from serve_app.fleet_file import check_fleet
from serve_app.kuberay.render import render_all, stale_files, write_rendered
from tests.kuberay.conftest import KUBERAY_DIR, OVERLAYS, ROOT, the_rayservice
from tests.kuberay.fleet import applications, fleet_of, serve_config_of
from tests.kuberay.schemas import (
    containers,
    core_errors,
    crd_errors,
    crd_schema,
    extra_errors,
    pod_template_errors,
    pod_templates,
)

SERVE_CONFIG = ROOT / "serve_config.yaml"
PLACEMENT_KEYS = {"uri", "resources", "num_replicas", "autoscaling"}
MODELS = ["digits", "minilm", "tiny-gpt2"]
ALL = ["base", *OVERLAYS]
CORE_KINDS = {"Namespace", "ServiceAccount", "NetworkPolicy", "PodDisruptionBudget"}
# Overlays that only patch the manifests of another one, and so render no serveConfigV2.
NO_OVERRIDES = {"prod-ha", "prod-incremental", "prod-public"}


def test_the_overlays_are_the_documented_ones() -> None:
    assert OVERLAYS == ["dev", "prod", "prod-gcsfuse", "prod-ha", "prod-incremental", "prod-public"]


@pytest.mark.parametrize("name", ALL)
def test_rayservice_is_valid_for_the_kuberay_crds(built, name: str) -> None:
    rayservice = the_rayservice(built[name])
    assert rayservice["apiVersion"] == "ray.io/v1"
    assert crd_errors(rayservice, crd_schema("RayService")) == []
    # The cluster KubeRay creates from rayClusterConfig must be a valid RayCluster too.
    raycluster_spec = crd_schema("RayCluster")["properties"]["spec"]
    assert crd_errors(rayservice["spec"]["rayClusterConfig"], raycluster_spec) == []


@pytest.mark.parametrize("name", ALL)
def test_objects_and_pod_templates_are_valid_for_kubernetes(built, name: str) -> None:
    errors = []
    for obj in built[name]:
        if obj["kind"] == "RayService":
            for where, template in pod_templates(obj):
                errors += pod_template_errors(template, where)
        elif obj["kind"] in CORE_KINDS:
            errors += core_errors(obj)
        else:
            errors += extra_errors(obj)
    assert errors == []
    kinds = {o["kind"] for o in built[name]}
    assert {"Namespace", "ServiceAccount", "RayService", "NetworkPolicy"} <= kinds
    assert {"PodDisruptionBudget", "PodMonitoring", "HealthCheckPolicy"} <= kinds


@pytest.mark.parametrize("name", ALL)
def test_serve_config_v2_is_valid_for_serve_and_for_us(built, name: str) -> None:
    serve_config = serve_config_of(the_rayservice(built[name]))
    ServeDeploySchema.model_validate(serve_config)
    fleet = check_fleet(serve_config)
    assert fleet.problems == []
    assert (fleet.ingresses, fleet.models, fleet.pools) == (["ingress"], MODELS, [])
    assert [m.name for m in fleet_of(serve_config).models] == MODELS


@pytest.mark.parametrize("name", ALL)
def test_one_ingress_application_and_one_unexposed_application_per_model(built, name) -> None:
    apps = applications(serve_config_of(the_rayservice(built[name])))
    ingresses = [a for a in apps.values() if a["import_path"] == "serve_app.app:build_ingress"]
    assert [(a["name"], a["route_prefix"]) for a in ingresses] == [("ingress", "/")]
    models = {n: a for n, a in apps.items() if a["import_path"] == "serve_app.app:build_model"}
    assert sorted(models) == MODELS
    for app_name, app in models.items():
        # Null, not absent: an absent route_prefix means "/" to Serve, which the ingress holds.
        assert "route_prefix" in app and app["route_prefix"] is None, app_name
        assert app["args"]["name"] == app_name
    assert set(apps) == {"ingress", *MODELS}


@pytest.mark.parametrize("name", ALL)
def test_serve_config_v2_is_serve_config_yaml_but_for_placement(built, name: str) -> None:
    local = yaml.safe_load(SERVE_CONFIG.read_text())
    deployed = serve_config_of(the_rayservice(built[name]))
    local_apps, deployed_apps = applications(local), applications(deployed)
    assert list(deployed_apps) == list(local_apps)  # the same applications, in the same order
    if name == "base":  # the base adds placement labels and the ingress's token variable only
        assert deployed_apps["ingress"]["args"] == {
            **local_apps["ingress"]["args"],
            "auth_tokens_env": "SERVE_APP_AUTH_TOKENS",
            "label_selector": {"ray.io/node-group": "cpu"},
        }
        for model in MODELS:
            resources = deployed_apps[model]["args"]["resources"]
            assert resources.pop("label_selector") == {"ray.io/node-group": "cpu"}
            assert deployed_apps[model] == local_apps[model]
    for apps in (local_apps, deployed_apps):
        apps["ingress"].pop("args", None)  # the ingress's settings are the overlays' to change
        for model in MODELS:
            for key in PLACEMENT_KEYS:
                apps[model]["args"].pop(key, None)
    assert deployed_apps == local_apps
    assert {k: v for k, v in deployed.items() if k != "applications"} == {
        k: v for k, v in local.items() if k != "applications"
    }


def test_the_committed_serve_config_patches_match_a_fresh_render() -> None:
    rendered = render_all(SERVE_CONFIG, KUBERAY_DIR)
    assert {r.path.parent.name for r in rendered} == {"base", *OVERLAYS} - NO_OVERRIDES
    assert stale_files(rendered) == [], "run: serve-app kuberay render"


def test_an_edit_of_serve_config_yaml_makes_the_patches_stale(tmp_path: Path) -> None:
    tree = shutil.copytree(KUBERAY_DIR, tmp_path / "kuberay")
    edited = yaml.safe_load(SERVE_CONFIG.read_text())
    applications(edited)["digits"]["args"]["batching"]["max_batch_size"] = 64
    config = tmp_path / "serve_config.yaml"
    config.write_text(yaml.safe_dump(edited, sort_keys=False))

    rendered = render_all(config, tree)
    assert len(stale_files(rendered)) == len(rendered)
    assert sorted(write_rendered(rendered)) == sorted(r.path for r in rendered)
    assert stale_files(render_all(config, tree)) == []
    patch = yaml.safe_load((tree / "overlays" / "prod" / "serve-config.patch.yaml").read_text())
    digits = applications(yaml.safe_load(patch["spec"]["serveConfigV2"]))["digits"]["args"]
    assert digits["batching"]["max_batch_size"] == 64
    assert digits["uri"] == "gs://BUCKET/models/digits"


def test_render_check_on_the_command_line_passes_for_the_committed_tree() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "serve_app.cli", "kuberay", "render", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", ALL)
def test_cluster_is_pinned_to_ray_2_60_and_the_project_images(built, name: str) -> None:
    rayservice = the_rayservice(built[name])
    assert '"ray[serve]==2.60.0"' in (ROOT / "pyproject.toml").read_text()
    assert rayservice["spec"]["rayClusterConfig"]["rayVersion"] == "2.60.0" == ray.__version__
    # The images are set once, in the base's kustomization, each pinned to a version tag
    # (immutable in the Artifact Registry repository) or a digest; never a moving tag.
    images = yaml.safe_load((KUBERAY_DIR / "base" / "kustomization.yaml").read_text())["images"]
    pinned = {}
    for image in images:
        assert image["newName"].endswith(f"/serve-app/{image['name']}")
        if "digest" in image:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", image["digest"])
            pinned[image["name"]] = f"{image['newName']}@{image['digest']}"
        else:
            assert re.fullmatch(r"\d+\.\d+\.\d+([.-][0-9A-Za-z.-]+)?", image["newTag"])
            pinned[image["name"]] = f"{image['newName']}:{image['newTag']}"
    assert set(pinned) == {"serve-app-cpu", "serve-app-gpu"}
    # The GPU image (CUDA) on GPU workers only; the CPU image everywhere else.
    for where, container in containers(rayservice):
        gpus = container["resources"]["limits"].get("nvidia.com/gpu")
        expected = pinned["serve-app-gpu" if gpus else "serve-app-cpu"]
        assert container["image"] == expected, where


@pytest.mark.parametrize("name", ALL)
def test_head_runs_no_replicas_and_every_pod_serves_and_exports_metrics(built, name) -> None:
    rayservice = the_rayservice(built[name])
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert cluster["enableInTreeAutoscaling"] is True
    http = serve_config_of(rayservice)["http_options"]
    assert http["host"] == "0.0.0.0"
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        assert group["rayStartParams"]["metrics-export-port"] == "8080"
    grpc = serve_config_of(rayservice)["grpc_options"]
    for where, container in containers(rayservice):
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["serve"] == http["port"], where
        # KubeRay (>= 1.7) puts the head's `serve-` ports on the serve Service: gRPC clients
        # reach the same Service as HTTP ones.
        assert ports["serve-grpc"] == grpc["port"], where
        assert ports["metrics"] == 8080, where
    service_accounts = {o["metadata"]["name"] for o in built[name] if o["kind"] == "ServiceAccount"}
    for where, template in pod_templates(rayservice):
        assert template["spec"]["serviceAccountName"] in service_accounts, where


@pytest.mark.parametrize("name", ALL)
def test_every_ray_container_runs_the_fast_path_as_make_run_does(built, name: str) -> None:
    """The same environment as `make run` (serve_app/fast_path.py), in every Ray container:
    Ray reads it when its processes start."""
    for where, container in containers(the_rayservice(built[name])):
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert {k: env.get(k) for k in FAST_PATH_ENV} == FAST_PATH_ENV, where
        assert {k: env.get(k) for k in TRANSPORT_ENV} == TRANSPORT_ENV, where


@pytest.mark.parametrize("name", ALL)
def test_workers_cache_models_on_a_volume(built, name: str) -> None:
    rayservice = the_rayservice(built[name])
    for group in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        spec = group["template"]["spec"]
        (container,) = spec["containers"]
        cache_dir = {e["name"]: e.get("value") for e in container["env"]}["SERVE_APP_CACHE_DIR"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes[mounts[cache_dir]], group["groupName"]


def _groups(built, name: str) -> dict[str, dict[str, Any]]:
    cluster = the_rayservice(built[name])["spec"]["rayClusterConfig"]
    return {g["groupName"]: g for g in cluster["workerGroupSpecs"]}


def test_dev_is_cpu_only(built) -> None:
    assert list(_groups(built, "dev")) == ["cpu"]
    assert "nvidia.com/gpu" not in yaml.safe_dump(built["dev"])
    models = fleet_of(serve_config_of(the_rayservice(built["dev"]))).models
    assert [m.resources.num_gpus for m in models] == [0, 0, 0]
    assert [m.uri for m in models] == [f"gs://BUCKET/models/{m}" for m in MODELS]


@pytest.mark.parametrize("name", [o for o in OVERLAYS if o.startswith("prod")])
def test_prod_has_an_autoscaled_l4_gpu_group(built, name: str) -> None:
    groups = _groups(built, name)
    assert list(groups) == ["cpu", "gpu-l4"]
    gpu = groups["gpu-l4"]
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    spec = gpu["template"]["spec"]
    assert spec["nodeSelector"]["cloud.google.com/gke-accelerator"] == "nvidia-l4"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    (container,) = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in yaml.safe_dump(groups["cpu"])
    models = fleet_of(serve_config_of(the_rayservice(built[name]))).models
    assert {m.name for m in models if m.resources.num_gpus > 0} == {"minilm", "tiny-gpt2"}


def test_prod_gcsfuse_mounts_the_bucket_where_the_models_are(built) -> None:
    rayservice = the_rayservice(built["prod-gcsfuse"])
    models = fleet_of(serve_config_of(rayservice)).models
    assert [m.uri for m in models] == [f"/mnt/models/{m}" for m in MODELS]
    for group in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        template = group["template"]
        assert template["metadata"]["annotations"]["gke-gcsfuse/volumes"] == "true"
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert volumes["models"]["csi"]["driver"] == "gcsfuse.csi.storage.gke.io"
        assert volumes["models"]["csi"]["readOnly"] is True
        (container,) = template["spec"]["containers"]
        assert {"name": "models", "mountPath": "/mnt/models", "readOnly": True} in container[
            "volumeMounts"
        ]


def test_prod_ha_keeps_gcs_state_in_redis_and_spreads_the_cpu_workers(built) -> None:
    spec = the_rayservice(built["prod-ha"])["spec"]
    fault_tolerance = spec["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert fault_tolerance["redisAddress"].endswith(":6379")
    assert fault_tolerance["redisPassword"]["valueFrom"]["secretKeyRef"]["name"]
    assert spec["excludeHeadPodFromServeSvc"] is True
    cpu = _groups(built, "prod-ha")["cpu"]
    assert cpu["minReplicas"] >= 2 and cpu["replicas"] >= 2  # an ingress replica outlives a pod
    spread = cpu["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} >= {"topology.kubernetes.io/zone"}
    assert (
        "gcsFaultToleranceOptions" not in the_rayservice(built["prod"])["spec"]["rayClusterConfig"]
    )


def test_upgrade_strategies(built) -> None:
    assert the_rayservice(built["prod"])["spec"]["upgradeStrategy"] == {"type": "NewCluster"}
    strategy = the_rayservice(built["prod-incremental"])["spec"]["upgradeStrategy"]
    assert strategy["type"] == "NewClusterWithIncrementalUpgrade"
    assert strategy["clusterUpgradeOptions"]["gatewayClassName"]


def test_the_validators_catch_mistakes(built) -> None:
    """The schema checks above can fail: a typo and a wrong type are both reported."""
    rayservice = copy.deepcopy(the_rayservice(built["prod"]))
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]
    head["rayStartParam"] = {"num-cpus": "0"}
    assert any("'rayStartParam' was unexpected" in e for e in crd_errors(
        rayservice, crd_schema("RayService")
    ))  # fmt: skip
    head["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = [2]
    assert pod_template_errors(head["template"], "head")
    assert core_errors({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"nme": "x"}})
    with pytest.raises(Exception, match="max_batch_sise"):
        parse_app_config({"models": [{"name": "a", "framework": "tensorflow", "uri": "x",
                                      "batching": {"max_batch_sise": 1}}]})  # fmt: skip
