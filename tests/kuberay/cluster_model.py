"""What KubeRay and Ray make of a rendered RayService, for tests that reason about placement,
disruption budgets and network policies without a cluster.

- Pod labels, as KubeRay v1.7's ``labelPod`` sets them: its own (``ray.io/cluster``,
  ``ray.io/group``, ``ray.io/node-type``, ...), the group's top-level ``labels``, then the
  template's labels, which win except for ``ray.io/node-type``, ``ray.io/group`` and
  ``ray.io/cluster``.
- Ray node labels: ``ray.io/node-group`` is the group's name (KubeRay sets
  ``RAY_NODE_TYPE_NAME`` from ``ray.io/group``, Ray turns it into that label), plus the group's
  ``labels`` (passed as ``ray start --labels``; autoscaler v2 reads the same field).
- Logical resources: ``num-cpus``/``num-gpus`` from ``rayStartParams``, else the container's
  limits (``cpu``, ``nvidia.com/gpu``), as KubeRay passes them to ``ray start``.
- Ray's label selectors (``label_selector``): ``value``, ``!value``, ``in(a, b)``, ``!in(a, b)``;
  a node without the key matches only the negative forms (autoscaler v2's
  ``_satisfies_label_constraints``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

HEAD_GROUP = "headgroup"  # KubeRay's ray.io/group value for the head
CLUSTER_NAME = "serve-app-raycluster-abcde"  # any generated name: selectors must not use it


@dataclass(frozen=True)
class Group:
    """One kind of Ray node: the head or a worker group."""

    name: str
    is_head: bool
    pod_labels: dict[str, str]
    ray_labels: dict[str, str]
    cpus: float
    gpus: float
    template: dict[str, Any]

    @property
    def containers(self) -> list[dict[str, Any]]:
        return self.template["spec"]["containers"]


def groups(rayservice: dict[str, Any]) -> list[Group]:
    """The head and the worker groups of a RayService, as the pods and Ray nodes they become."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    specs = [(HEAD_GROUP, True, cluster["headGroupSpec"])]
    specs += [(g["groupName"], False, g) for g in cluster.get("workerGroupSpecs") or []]
    return [_group(name, is_head, spec) for name, is_head, spec in specs]


def _group(name: str, is_head: bool, spec: dict[str, Any]) -> Group:
    kuberay = {
        "ray.io/is-ray-node": "yes",
        "ray.io/cluster": CLUSTER_NAME,
        "ray.io/node-type": "head" if is_head else "worker",
        "ray.io/group": name,
        "app.kubernetes.io/name": "kuberay",
        "app.kubernetes.io/created-by": "kuberay-operator",
    }
    group_labels = spec.get("labels") or {}
    template = spec["template"]
    overrides = {**(template.get("metadata", {}).get("labels") or {}), **group_labels}
    fixed = ("ray.io/node-type", "ray.io/group", "ray.io/cluster")
    pod_labels = kuberay | {k: v for k, v in overrides.items() if k not in fixed}
    limits = template["spec"]["containers"][0].get("resources", {}).get("limits", {})
    params = spec.get("rayStartParams") or {}
    cpus = float(params["num-cpus"]) if "num-cpus" in params else _cpu(limits.get("cpu", "0"))
    gpus = float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
    ray_labels = {"ray.io/node-group": name, **group_labels}
    return Group(name, is_head, pod_labels, ray_labels, cpus, gpus, template)


def _cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if str(quantity).endswith("m") else float(quantity)


def ray_selector_matches(selector: dict[str, str] | None, labels: dict[str, str]) -> bool:
    """Whether a node with Ray ``labels`` satisfies a Ray ``label_selector``."""
    for key, expression in (selector or {}).items():
        negated = expression.startswith("!")
        expression = expression.removeprefix("!")
        found = re.fullmatch(r"in\((.*)\)", expression)
        values = {v.strip() for v in found.group(1).split(",")} if found else {expression}
        if (labels.get(key) in values) == negated:
            return False
    return True


def k8s_selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether ``labels`` satisfy a Kubernetes LabelSelector (matchLabels, matchExpressions)."""
    if not (selector.get("matchLabels") or {}).items() <= labels.items():
        return False
    for term in selector.get("matchExpressions") or []:
        key, operator, values = term["key"], term["operator"], set(term.get("values") or [])
        present = key in labels
        ok = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels[key] not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]
        if not ok:
            return False
    return True
