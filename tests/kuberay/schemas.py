"""Validation of rendered manifests against the schemas a real cluster would apply.

- KubeRay's CRDs (``tests/data/kuberay/``, v1.7.0): their ``openAPIV3Schema``, made strict the way
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

from tests.helpers import KUBERAY_CRDS

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


# Kinds defined by CRDs that are not KubeRay's and not bundled anywhere installable: the part
# of each schema the manifests use, written from the upstream CRDs (GMP's PodMonitoring
# monitoring.googleapis.com/v1, Gateway API v1 standard channel, GKE's networking.gke.io/v1
# policies), strict in the same way, so a misspelt or misplaced field is an error.
def _obj(required: tuple[str, ...] = (), **properties: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "required": list(required),
        "properties": properties,
        "additionalProperties": False,
    }


_STR = {"type": "string", "minLength": 1}
_INT = {"type": "integer"}
_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_DURATION = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h))+$"}
_META = {"type": "object"}  # checked by kubernetes-validate's ObjectMeta elsewhere
_TARGET_REF = _obj(("group", "kind", "name"), group={"type": "string"}, kind=_STR, name=_STR,
                   namespace=_STR)  # fmt: skip


def _kind(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return _obj(
        ("apiVersion", "kind", "metadata", "spec"),
        apiVersion={"const": api_version},
        kind={"const": kind},
        metadata=_META,
        spec=spec,
    )


EXTRA_SCHEMAS: dict[str, dict[str, Any]] = {
    "PodMonitoring": _kind(
        "monitoring.googleapis.com/v1",
        "PodMonitoring",
        _obj(
            ("selector", "endpoints"),
            selector=_obj(matchLabels=_LABELS, matchExpressions={"type": "array"}),
            endpoints={
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    ("port", "interval"),
                    port={"anyOf": [_PORT, _STR]},
                    interval=_DURATION,
                    timeout=_DURATION,
                    path={"type": "string", "pattern": "^/"},
                    scheme={"enum": ["http", "https"]},
                ),
            },
            targetLabels=_obj(
                fromPod={
                    "type": "array",
                    "items": _obj(
                        ("from",),
                        **{"from": _STR, "to": {"type": "string", "pattern": "^[a-zA-Z_]\\w*$"}},
                    ),
                },
                metadata={"type": "array", "items": _STR},
            ),
            filterRunning={"type": "boolean"},
        ),
    ),
    "Gateway": _kind(
        "gateway.networking.k8s.io/v1",
        "Gateway",
        _obj(
            ("gatewayClassName", "listeners"),
            gatewayClassName=_STR,
            listeners={
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    ("name", "port", "protocol"),
                    name=_STR,
                    hostname=_STR,
                    port=_PORT,
                    protocol={"enum": ["HTTP", "HTTPS", "TLS", "TCP", "UDP"]},
                    tls=_obj(
                        mode={"enum": ["Terminate", "Passthrough"]},
                        certificateRefs={"type": "array"},
                        options=_LABELS,
                    ),
                    allowedRoutes={"type": "object"},
                ),
            },
            addresses={
                "type": "array",
                "items": _obj(("value",), type=_STR, value=_STR),
            },
        ),
    ),
    "HTTPRoute": _kind(
        "gateway.networking.k8s.io/v1",
        "HTTPRoute",
        _obj(
            parentRefs={
                "type": "array",
                "items": _obj(
                    ("name",),
                    name=_STR,
                    namespace=_STR,
                    sectionName=_STR,
                    group={"type": "string"},
                    kind=_STR,
                    port=_PORT,
                ),
            },
            hostnames={"type": "array", "items": _STR},
            rules={
                "type": "array",
                "items": _obj(
                    matches={"type": "array"},
                    filters={"type": "array"},
                    timeouts=_obj(request=_DURATION, backendRequest=_DURATION),
                    backendRefs={
                        "type": "array",
                        "items": _obj(
                            ("name",),
                            name=_STR,
                            port=_PORT,
                            weight=_INT,
                            group={"type": "string"},
                            kind=_STR,
                            namespace=_STR,
                        ),
                    },
                ),
            },
        ),
    ),
    "HealthCheckPolicy": _kind(
        "networking.gke.io/v1",
        "HealthCheckPolicy",
        _obj(
            ("targetRef",),
            targetRef=_TARGET_REF,
            default=_obj(
                checkIntervalSec=_INT,
                timeoutSec=_INT,
                healthyThreshold=_INT,
                unhealthyThreshold=_INT,
                logConfig=_obj(enabled={"type": "boolean"}),
                config=_obj(
                    type={"enum": ["TCP", "HTTP", "HTTPS", "HTTP2", "GRPC"]},
                    httpHealthCheck=_obj(
                        host=_STR,
                        port=_PORT,
                        portName=_STR,
                        portSpecification={
                            "enum": ["USE_FIXED_PORT", "USE_NAMED_PORT", "USE_SERVING_PORT"]
                        },
                        requestPath={"type": "string", "pattern": "^/"},
                        response=_STR,
                        proxyHeader={"enum": ["NONE", "PROXY_V1"]},
                    ),
                ),
            ),
        ),
    ),
    "GCPBackendPolicy": _kind(
        "networking.gke.io/v1",
        "GCPBackendPolicy",
        _obj(
            ("targetRef",),
            targetRef=_TARGET_REF,
            default=_obj(
                timeoutSec={"type": "integer", "minimum": 1},
                connectionDraining=_obj(
                    drainingTimeoutSec={"type": "integer", "minimum": 0, "maximum": 3600}
                ),
                logging=_obj(enabled={"type": "boolean"}, sampleRate=_INT),
                securityPolicy=_STR,
                maxRatePerEndpoint=_INT,
            ),
        ),
    ),
}


def extra_errors(obj: dict[str, Any]) -> list[str]:
    """Violations of the schema of a PodMonitoring, Gateway, HTTPRoute, HealthCheckPolicy or
    GCPBackendPolicy; its metadata goes through Kubernetes' own ObjectMeta schema."""
    errors = crd_errors(obj, EXTRA_SCHEMAS[obj["kind"]])
    wrapper = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}
    return [f"{obj['kind']} {e}" for e in errors] + core_errors(wrapper)
