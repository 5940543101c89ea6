"""Whether a model whose replicas wait for resources can ever be placed.

Serve warns about replicas that wait over 30 s to be scheduled, whatever the cause: a model
that fits no node, a full fixed cluster, or an autoscaler that is still adding the node the
replica needs (a GPU group that scales from zero takes minutes). Only the first two are
answered 503 at once; while a node that fits can still be added, requests keep waiting
within their deadlines. Two signals say a node is coming: launches under way in the
autoscaler's (v2) cluster status, and node types of the autoscaler's cluster config in the
GCS that fit and are below their maximum. A cluster with neither is as big as it is.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class NodeGroup:
    """One node type the autoscaler can start, and how many of it there are now."""

    name: str
    resources: dict[str, float]
    max_count: int  # -1: no limit
    nodes: int = 0  # running, idle and pending nodes of this type


@dataclass(frozen=True)
class Capacity:
    """What the cluster can grow to: ``groups`` is None without an autoscaler."""

    groups: tuple[NodeGroup, ...] | None
    launching: frozenset[str] = frozenset()  # node types with launches under way


def parse_resources(text: str) -> dict[str, float] | None:
    """The resources in Serve's message (``{"CPU": 1.0, ...}``), or None if unreadable."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    try:
        return {str(k): float(v) for k, v in parsed.items()}
    except (TypeError, ValueError):
        return None


def _fits(required: dict[str, float], group: NodeGroup) -> bool:
    return all(group.resources.get(k, 0.0) >= v for k, v in required.items() if v > 0)


def _can_grow(group: NodeGroup, launching: frozenset[str]) -> bool:
    return group.max_count < 0 or group.nodes < group.max_count or group.name in launching


def never_placeable(required: dict[str, float], capacity: Capacity | None) -> str | None:
    """Why a replica asking for ``required`` will not be placed, or None while the
    autoscaler can still add (or is adding) a node type that holds it.

    Without an autoscaler (or when the cluster could not be read) nothing is coming: a
    replica that waited past Serve's warning will not be placed (returned as "").
    """
    if capacity is None or capacity.groups is None:
        if capacity is not None and capacity.launching:
            return None
        return ""
    fitting = [g for g in capacity.groups if _fits(required, g)]
    if not fitting:
        kinds = "; ".join(
            f"{g.name} {json.dumps(g.resources, sort_keys=True)}" for g in capacity.groups
        )
        return f"no node type of the cluster can hold one (node types: {kinds or 'none'})"
    if any(_can_grow(g, capacity.launching) for g in fitting):
        return None
    full = ", ".join(f"{g.name} ({g.nodes} of {g.max_count})" for g in fitting)
    return f"the node types that can hold one are at their maximum: {full}"


def read_capacity(gcs_address: str) -> Capacity | None:
    """The autoscaler's node types with their node counts now (blocking: GCS reads), or
    None if the cluster could not be read."""
    try:
        import ray._private.state
        from ray.autoscaler.v2.sdk import get_cluster_status

        config = ray._private.state.state.get_cluster_config()
        status = get_cluster_status(gcs_address, timeout=5)
    except Exception:  # an old GCS or a restarting one: decide as without an autoscaler
        logger.warning("could not read the cluster's node types", exc_info=True)
        return None
    counts: dict[str, int] = {}
    for node in (*status.active_nodes, *status.idle_nodes, *status.pending_nodes):
        counts[node.ray_node_type_name] = counts.get(node.ray_node_type_name, 0) + 1
    launching = frozenset(
        {r.ray_node_type_name for r in status.pending_launches}
        | {n.ray_node_type_name for n in status.pending_nodes}
    )
    if config is None or not config.node_group_configs:
        return Capacity(None, launching)
    groups = tuple(
        NodeGroup(
            g.name,
            {k: float(v) for k, v in g.resources.items()},
            int(g.max_count),
            counts.get(g.name, 0),
        )
        for g in config.node_group_configs
    )
    return Capacity(groups, launching)
