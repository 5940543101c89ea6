"""A model is called unplaceable only when no node can ever hold it (issue 25, item 10).

Serve's 30 s "taken more than 30s to be scheduled" warning also fires while the autoscaler
adds the node a replica needs; then requests wait instead of getting 503.
"""

from __future__ import annotations

from serve_app.fleet_status import FleetStatus, ModelHealth
from serve_app.placement import Capacity, NodeGroup, never_placeable, parse_resources

# Serve's message for replicas waiting on resources (deployment_state.py), as it reads.
WAITING = (
    "Deployment 'big' in application 'big' has 1 replicas that have taken more than 30s to be"
    " scheduled. This may be due to waiting for the cluster to auto-scale or for a runtime"
    ' environment to be installed. Resources required for each replica: {"CPU": 1.0, "GPU":'
    ' 1.0}, total resources available: {"CPU": 3.0}. Use `ray status` for more details.'
)
GPU = {"CPU": 1.0, "GPU": 1.0}
HEAD = NodeGroup("head", {"CPU": 4.0}, 1, nodes=1)


def gpu_group(nodes: int, max_count: int = 2) -> NodeGroup:
    return NodeGroup("gpu-l4", {"CPU": 8.0, "GPU": 1.0}, max_count, nodes=nodes)


def test_a_gpu_group_that_scales_from_zero_is_waited_for() -> None:
    assert never_placeable(GPU, Capacity((HEAD, gpu_group(0)))) is None


def test_a_group_with_no_limit_is_waited_for() -> None:
    assert never_placeable(GPU, Capacity((HEAD, gpu_group(5, max_count=-1)))) is None


def test_a_group_at_its_maximum_with_a_launch_under_way_is_waited_for() -> None:
    capacity = Capacity((HEAD, gpu_group(2)), launching=frozenset({"gpu-l4"}))
    assert never_placeable(GPU, capacity) is None


def test_a_group_at_its_maximum_is_unplaceable() -> None:
    why = never_placeable(GPU, Capacity((HEAD, gpu_group(2))))
    assert why == "the node types that can hold one are at their maximum: gpu-l4 (2 of 2)"


def test_no_node_type_that_fits_is_unplaceable_and_lists_the_types() -> None:
    why = never_placeable({"CPU": 512.0}, Capacity((HEAD, gpu_group(0))))
    assert why is not None and why.startswith("no node type of the cluster can hold one")
    assert 'head {"CPU": 4.0}' in why and "gpu-l4" in why


def test_without_an_autoscaler_the_cluster_is_as_big_as_it_is() -> None:
    assert never_placeable(GPU, None) == ""
    assert never_placeable(GPU, Capacity(None)) == ""
    assert never_placeable(GPU, Capacity(None, launching=frozenset({"x"}))) is None


def test_serve_resources_are_parsed_or_refused() -> None:
    assert parse_resources('{"CPU": 1.0, "accelerator_type:L4": 0.001}') == {
        "CPU": 1.0,
        "accelerator_type:L4": 0.001,
    }
    assert parse_resources("{CPU: 1}") is None
    assert parse_resources('["CPU"]') is None


def fleet_waiting(capacity: Capacity | None) -> FleetStatus:
    fleet = FleetStatus("ingress", ["big"])
    fleet.health = {"big": ModelHealth("UPDATING", 0, WAITING)}
    fleet.capacity = capacity
    return fleet


def test_the_fleet_lets_requests_wait_while_a_node_that_fits_can_be_added() -> None:
    fleet = fleet_waiting(Capacity((HEAD, gpu_group(0))))
    assert fleet.failure("big") is None
    assert fleet.available("big") is False  # no replica yet: it is not ready


def test_the_fleet_answers_503_when_the_fitting_group_is_full() -> None:
    error = fleet_waiting(Capacity((HEAD, gpu_group(2)))).failure("big")
    assert error is not None
    assert "model 'big' cannot be placed: each replica asks for" in str(error)
    assert "gpu-l4 (2 of 2)" in str(error)


def test_the_fleet_answers_503_on_a_fixed_cluster_as_before() -> None:
    error = fleet_waiting(None).failure("big")
    assert error is not None
    assert 'the cluster has {"CPU": 3.0} free' in str(error)
