"""Disruption: a budget per worker group, a preStop that drains the Ray node before the pod
stops (with the time to do it), and a load balancer that lets a leaving pod finish."""

from __future__ import annotations

import shlex
from typing import Any

import pytest
from ray.scripts.scripts import drain_node

from tests.kuberay.cluster_model import groups, k8s_selector_matches
from tests.kuberay.conftest import OVERLAYS, the_rayservice

ALL = ["base", *OVERLAYS]


@pytest.mark.parametrize("name", ALL)
def test_each_worker_group_has_one_disruption_budget(built, name: str) -> None:
    budgets = [o for o in built[name] if o["kind"] == "PodDisruptionBudget"]
    nodes = groups(the_rayservice(built[name]))
    for budget in budgets:
        selected = [g.name for g in nodes if k8s_selector_matches(budget["spec"]["selector"],
                                                                  g.pod_labels)]  # fmt: skip
        assert len(selected) == 1, (budget["metadata"]["name"], selected)
        assert not next(g for g in nodes if g.name == selected[0]).is_head
        # One pod at a time: a drain never takes a whole group, and never blocks forever.
        assert budget["spec"] == {"maxUnavailable": 1, "selector": budget["spec"]["selector"]}
    covered = [
        g.name for g in nodes for b in budgets
        if k8s_selector_matches(b["spec"]["selector"], g.pod_labels)
    ]  # fmt: skip
    assert sorted(covered) == sorted(g.name for g in nodes if not g.is_head)


def drain(container: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """The ``ray drain-node`` options of a preStop hook (parsed by Ray's own CLI definition),
    and how long the hook then sleeps."""
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["/bin/sh", "-c"]
    steps = [shlex.split(step) for step in command[2].split(";")]
    assert [step[:2] for step in steps] == [["ray", "drain-node"], ["sleep", steps[1][1]]]
    context = drain_node.make_context("drain-node", steps[0][2:])
    return context.params, float(steps[1][1])


@pytest.mark.parametrize("name", ALL)
def test_workers_drain_before_they_stop(built, name: str) -> None:
    objects = built[name]
    for group in groups(the_rayservice(objects)):
        if group.is_head:
            continue
        (container,) = group.containers
        params, sleep_s = drain(container)
        # PREEMPTION: the node goes away whatever runs on it; Serve starts replacements
        # elsewhere and drains the replicas here before the deadline.
        assert params["reason"] == "DRAIN_NODE_REASON_PREEMPTION"
        deadline = params["deadline_remaining_seconds"]
        assert 0 < sleep_s <= deadline
        # Kubernetes kills the pod after the grace period, counted from the preStop's start.
        assert group.template["spec"]["terminationGracePeriodSeconds"] > deadline
        # The load balancer keeps a leaving pod's connections as long as it drains.
        backend = next(o for o in objects if o["kind"] == "GCPBackendPolicy")["spec"]["default"]
        assert backend["connectionDraining"]["drainingTimeoutSec"] >= deadline


@pytest.mark.parametrize("name", ALL)
def test_the_cluster_autoscaler_does_not_move_the_head(built, name: str) -> None:
    head = next(g for g in groups(the_rayservice(built[name])) if g.is_head)
    annotations = head.template["metadata"]["annotations"]
    assert annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
