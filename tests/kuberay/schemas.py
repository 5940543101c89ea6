"""Validation of rendered manifests against the schemas a real cluster would apply.

- KubeRay's CRDs (``../shared/kuberay/``, v1.7.0): their ``openAPIV3Schema``, made strict the way
  ``kubectl apply`` (server-side field validation ``Strict``) is: an unknown field is an error.
- Kubernetes' own types, from ``kubernetes-validate``'s bundled JSON schemas (strict variant):
  whole core objects, and each pod template embedded in the RayService.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from functools import cache
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from tests.helpers import SHARED

KUBERAY_CRDS = SHARED / "kuberay"
# GKE's regular channel as of this writing; kubernetes-validate picks its nearest schema set.
KUBERNETES_VERSION = "1.34"


@cache
def crd_schema(kind: str, version: str = "v1") -> dict[str, Any]:
    """The strict ``openAPIV3Schema`` of a KubeRay CRD (``RayService`` or ``RayCluster``)."""
    text = (KUBERAY_CRDS / f"ray.io_{kind.lower()}s.yaml").read_text()
    crd = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1 MB each
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return _strict(copy.deepcopy(served["schema"]["openAPIV3Schema"]))


def crd_errors(instance: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Every violation of ``schema`` in ``instance``, as ``path: message`` lines."""
    validator = jsonschema.Draft7Validator(schema)
    return sorted(
        f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
        for error in validator.iter_errors(instance)
    )


def core_errors(obj: dict[str, Any]) -> list[str]:
    """Violations of Kubernetes' own schema for ``obj`` (a core object such as a Namespace)."""
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = "/".join(map(str, error.absolute_path)) or "(root)"
        return [f"{obj.get('kind')} {where}: {error.message}"]
    return []


def pod_template_errors(template: dict[str, Any], where: str) -> list[str]:
    """Violations of ``PodTemplateSpec`` (metadata and pod spec) in an embedded pod template.

    kubernetes-validate picks a schema by kind, so the template travels in a ``PodTemplate``.
    """
    wrapper = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "embedded"},
        "template": template,
    }
    return [f"{where}: {line}" for line in core_errors(wrapper)]


def pod_templates(rayservice: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, template)`` for the head and each worker group of a RayService."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    yield "headGroupSpec", cluster["headGroupSpec"]["template"]
    for group in cluster.get("workerGroupSpecs") or []:
        yield f"workerGroupSpecs[{group['groupName']}]", group["template"]


def containers(rayservice: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, container)`` for every container of every pod template."""
    for where, template in pod_templates(rayservice):
        for container in template["spec"]["containers"]:
            yield f"{where}/{container['name']}", container


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Forbid unknown fields wherever the schema lists its fields and does not opt out."""
    for sub in (schema.get("properties") or {}).values():
        _strict(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            _strict(schema[key])
    for key in ("anyOf", "allOf", "oneOf"):
        for sub in schema.get(key) or []:
            _strict(sub)
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    return schema
