"""Placement that holds: every model and pool of serve_config.yaml, and the ingress, asks (Ray's
``label_selector``) for the labels of a worker group that can host it, and a CPU replica never
for a GPU group, so it can neither land on a GPU node nor make the autoscaler add one. Proven
from the rendered RayService: its serveConfigV2 against its worker groups."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.kuberay.cluster_model import Group, groups, ray_selector_matches
from tests.kuberay.conftest import OVERLAYS, ROOT, the_rayservice
from tests.kuberay.fleet import applications, fleet_of, serve_config_of

ALL = ["base", *OVERLAYS]


def replicas(rayservice: dict[str, Any]) -> list[tuple[str, dict | None, float, float]]:
    """``(what, label_selector, num_cpus, num_gpus)`` for each model, pool and the ingress."""
    fleet = fleet_of(serve_config_of(rayservice))  # defaults filled in, as replicas get them
    found = [
        (f"{kind} {spec.name}", spec.resources.label_selector, spec.resources.num_cpus,
         spec.resources.num_gpus)
        for kind, specs in (("model", fleet.models), ("pool", fleet.pools))
        for spec in specs
    ]  # fmt: skip
    ingresses = [("the ingress", i.label_selector, i.num_cpus, 0.0) for i in fleet.ingresses]
    return [*found, *ingresses]


def placement_errors(rayservice: dict[str, Any]) -> list[str]:
    """Each replica that could be placed nowhere, or on a group of the wrong kind."""
    errors = []
    nodes = groups(rayservice)
    for what, selector, cpus, gpus in replicas(rayservice):
        labelled = [g for g in nodes if ray_selector_matches(selector, g.ray_labels)]
        if not any(fits(g, cpus, gpus) for g in labelled):
            errors.append(f"{what} ({selector}) fits no group: {[g.name for g in labelled]}")
        wrong = [g.name for g in labelled if (g.gpus > 0) != (gpus > 0)]
        if wrong:
            kind = "GPU" if gpus > 0 else "CPU"
            errors.append(f"{kind} replica {what} ({selector}) may land on {wrong}")
    return errors


def fits(group: Group, cpus: float, gpus: float) -> bool:
    return group.cpus >= cpus and group.gpus >= gpus


@pytest.mark.parametrize("name", ALL)
def test_every_replica_has_a_group_of_its_own_kind(built, name: str) -> None:
    assert placement_errors(the_rayservice(built[name])) == []


@pytest.mark.parametrize("name", ALL)
def test_every_model_of_serve_config_yaml_is_placed(built, name: str) -> None:
    local = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    placed = [what for what, *_ in replicas(the_rayservice(built[name]))]
    kinds = {"serve_app.app:build_model": "model", "serve_app.app:build_pool": "pool"}
    expected = [
        f"{kinds[app['import_path']]} {app['args']['name']}"
        for app in local["applications"]
        if app["import_path"] in kinds
    ]
    assert expected  # the default fleet has models, each placed below
    assert placed == [*expected, "the ingress"]


@pytest.mark.parametrize("name", ALL)
def test_autoscaler_v2_knows_each_groups_labels(built, name: str) -> None:
    cluster = the_rayservice(built[name])["spec"]["rayClusterConfig"]
    # v2 scales a group up for a replica only if the replica's label_selector matches the
    # group's `labels`; v1 ignores label selectors.
    assert cluster["autoscalerOptions"]["version"] == "v2"
    assert cluster["enableInTreeAutoscaling"] is True
    for group in cluster["workerGroupSpecs"]:
        # The same value Ray sets on the running node (ray.io/node-group = the group's name).
        assert group["labels"]["ray.io/node-group"] == group["groupName"]
    head = next(g for g in groups(the_rayservice(built[name])) if g.is_head)
    assert head.cpus == 0 and head.gpus == 0  # nothing is ever placed on the head


def test_the_check_catches_misplaced_replicas(built) -> None:
    rayservice = the_rayservice(built["prod"])
    serve_config = serve_config_of(rayservice)
    apps = applications(serve_config)
    # A CPU model without a selector could land on the GPU group; a GPU model that asks for
    # the CPU group fits nowhere and asks for the wrong kind; one that asks for groups that do
    # not exist fits nowhere.
    apps["digits"]["args"]["resources"].pop("label_selector")
    apps["minilm"]["args"]["resources"]["label_selector"] = {"ray.io/node-group": "cpu"}
    apps["tiny-gpt2"]["args"]["resources"]["label_selector"] = {
        "ray.io/node-group": "in(gpu-a100, gpu-h100)"
    }
    rayservice["spec"]["serveConfigV2"] = yaml.safe_dump(serve_config)
    errors = placement_errors(rayservice)
    assert [e.split(" (")[0] for e in errors] == [
        "CPU replica model digits",
        "model minilm",
        "GPU replica model minilm",
        "model tiny-gpt2",
    ]
