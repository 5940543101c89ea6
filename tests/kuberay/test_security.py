"""A secured cluster, proven from the rendered objects: Ray's token auth, bearer tokens for the
service from a Secret, a network policy that admits exactly who needs each port, an internal
gateway unless the public overlay asks otherwise, and pods that run without privileges."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
import yaml
from ray.serve._private import constants as serve_constants

from serve_app.config import IngressSpec
from tests.kuberay.cluster_model import (
    Group,
    groups,
    k8s_selector_matches,
    ray_selector_matches,
)
from tests.kuberay.conftest import OVERLAYS, the_rayservice
from tests.kuberay.fleet import the_ingress

ALL = ["base", *OVERLAYS]
NAMESPACE = "serve-app"
INTERNAL, EXTERNAL = "gke-l7-rilb", "gke-l7-global-external-managed"


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


@pytest.mark.parametrize("name", ALL)
def test_ray_asks_for_a_token(built, name: str) -> None:
    cluster = the_rayservice(built[name])["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token"}  # KubeRay generates one per cluster
    version = tuple(int(p) for p in cluster["rayVersion"].split("."))
    assert version >= (2, 52, 0)  # KubeRay refuses token mode below Ray 2.52


@pytest.mark.parametrize("name", ALL)
def test_model_routes_ask_for_bearer_tokens_from_a_secret(built, name: str) -> None:
    rayservice = the_rayservice(built[name])
    ingress = the_ingress(rayservice)
    assert ingress.auth_tokens == []  # no token is ever written in the manifests
    variable = ingress.auth_tokens_env
    assert variable
    hosts = [g for g in groups(rayservice) if can_host_ingress(g, ingress)]
    assert hosts
    for group in hosts:
        for container in group.containers:
            env = {e["name"]: e for e in container.get("env") or []}
            assert "value" not in env[variable], group.name
            ref = env[variable]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "serve-app-tokens", "key": "tokens"}
            assert not ref.get("optional")  # no Secret, no pod: never served without tokens


def can_host_ingress(group: Group, ingress: IngressSpec) -> bool:
    return ray_selector_matches(ingress.label_selector, group.ray_labels) and (
        group.cpus >= ingress.num_cpus
    )


# --- the network policy -------------------------------------------------------------------
def admits(policy: dict[str, Any], source: dict[str, Any], port: int, target: dict) -> bool:
    """Whether ``policy`` lets ``source`` open TCP ``port`` on a pod labelled ``target``.

    ``source`` is ``{"ip": ...}`` or ``{"pod": labels, "namespace": name}`` (namespaces carry
    their ``kubernetes.io/metadata.name`` label, as Kubernetes sets it).
    """
    spec = policy["spec"]
    assert "Ingress" in spec["policyTypes"]
    if not k8s_selector_matches(spec["podSelector"], target):
        return True  # not selected: this policy does not restrict it
    for rule in spec.get("ingress") or []:
        peers = rule.get("from") or []  # none: from anywhere
        if (not peers or any(peer_matches(peer, source) for peer in peers)) and any(
            port_matches(p, port) for p in rule.get("ports") or [{}]
        ):
            return True
    return False


def peer_matches(peer: dict[str, Any], source: dict[str, Any]) -> bool:
    if "ipBlock" in peer:
        if "ip" not in source:
            return False
        ip = ipaddress.ip_address(source["ip"])
        block = peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except") or []
        )
    if "pod" not in source:  # traffic from outside the cluster matches no pod peer
        return False
    namespace_labels = {"kubernetes.io/metadata.name": source["namespace"]}
    if "namespaceSelector" in peer:
        if not k8s_selector_matches(peer["namespaceSelector"], namespace_labels):
            return False
    elif source["namespace"] != NAMESPACE:  # a bare podSelector means the policy's namespace
        return False
    return k8s_selector_matches(peer.get("podSelector") or {}, source["pod"])


def port_matches(rule: dict[str, Any], port: int) -> bool:
    if rule.get("protocol", "TCP") != "TCP":
        return False
    if "port" not in rule:
        return True
    return rule["port"] <= port <= rule.get("endPort", rule["port"])


def ray_pods(rayservice: dict[str, Any]) -> list[dict[str, str]]:
    return [g.pod_labels for g in groups(rayservice)]


RAY_INTERNAL = [6379, 8080, 10002, 19999]  # GCS, metrics, the Ray worker port range
EPHEMERAL = [32768, 45000, 60999]  # ports the OS picks: raylet, agents, replica gRPC servers
CLOSED = [8265, 10001]  # dashboard, Ray client


@pytest.mark.parametrize("name", ALL)
def test_network_policy_admits_each_port_to_who_needs_it_and_no_one_else(built, name) -> None:
    policy = one(built[name], "NetworkPolicy")
    rayservice = the_rayservice(built[name])
    serve_port = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["http_options"]["port"]
    # Serve's fast path: HAProxy -> ingress replicas' HTTP, and their gRPC (Ray's own ranges).
    # HAProxy -> the head's fallback proxy (what no ingress replica serves directly).
    replica_ports = [
        serve_constants.RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT,
        serve_constants.RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT,
        serve_constants.RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT,
        serve_constants.RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT,
        serve_constants.RAY_SERVE_FALLBACK_PROXY_HTTP_PORT,
        serve_constants.RAY_SERVE_FALLBACK_PROXY_GRPC_PORT,
    ]
    pods = ray_pods(rayservice)
    for target in pods:
        assert k8s_selector_matches(policy["spec"]["podSelector"], target)  # every Ray pod
        for labels in pods:  # Ray pod to Ray pod
            ray_pod = {"pod": labels, "namespace": NAMESPACE}
            for port in [serve_port, *replica_ports, *RAY_INTERNAL, *EPHEMERAL]:
                assert admits(policy, ray_pod, port, target), (labels, target, port)
            for port in CLOSED:
                assert not admits(policy, ray_pod, port, target), port

    strangers = [
        {"pod": {"app": "debug"}, "namespace": NAMESPACE},
        {"pod": {"app": "other"}, "namespace": "default"},
        {"pod": {"app.kubernetes.io/name": "serve-app"}, "namespace": "elsewhere"},
        # The operator's label is no pass: anyone who may create a pod can set it.
        {"pod": {"app.kubernetes.io/name": "kuberay-operator"}, "namespace": "elsewhere"},
        {"pod": {"app.kubernetes.io/name": "kuberay-operator"}, "namespace": NAMESPACE},
        {"ip": "10.0.0.5"},  # another VM of the VPC
    ]
    gateway = [{"ip": "10.129.0.7"}, {"ip": "35.191.4.2"}, {"ip": "130.211.1.9"}]
    operator = [
        {"pod": {"app.kubernetes.io/name": "kuberay-operator"}, "namespace": "kuberay-system"},
        {"pod": {"k8s-app": "konnectivity-agent"}, "namespace": "kube-system"},
    ]
    prometheus = [{"pod": {"app.kubernetes.io/name": "collector"}, "namespace": "gmp-system"}]
    # gRPC clients in the cluster opt in with a label; gRPC does not cross the gateway.
    grpc_port = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["grpc_options"]["port"]
    grpc_clients = [
        {"pod": {"serve-app/grpc-client": "true"}, "namespace": "default"},
        {"pod": {"serve-app/grpc-client": "true", "app": "x"}, "namespace": NAMESPACE},
    ]
    every_port = [serve_port, grpc_port, *replica_ports, *RAY_INTERNAL, *EPHEMERAL, *CLOSED]
    expected = [
        (strangers, set()),
        (gateway, {serve_port}),
        (operator, {serve_port, 8265}),
        (prometheus, {8080}),
        (grpc_clients, {grpc_port}),
    ]
    for target in pods:
        for sources, open_ports in expected:
            for source in sources:
                for port in every_port:
                    assert admits(policy, source, port, target) == (port in open_ports), (
                        source,
                        port,
                    )


@pytest.mark.parametrize("name", ALL)
def test_the_network_policy_ports_are_the_ports_the_pods_use(built, name: str) -> None:
    rayservice = the_rayservice(built[name])
    for group in groups(rayservice):
        (container,) = group.containers
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == 8080
        assert ports["serve"] == 8000
        assert ports["serve-grpc"] == 9000
        if group.is_head:
            assert (ports["gcs-server"], ports["dashboard"], ports["client"]) == (6379, *CLOSED)
    policy = one(built[name], "NetworkPolicy")
    blocks = [p["ipBlock"]["cidr"] for r in policy["spec"]["ingress"] for p in r["from"]
              if "ipBlock" in p]  # fmt: skip
    assert all(ipaddress.ip_network(cidr, strict=True) for cidr in blocks)


def test_the_policy_checker_can_fail(built) -> None:
    policy = one(built["prod"], "NetworkPolicy")
    head = ray_pods(the_rayservice(built["prod"]))[0]
    wide_open = {"spec": dict(policy["spec"], ingress=[{}])}
    assert admits(wide_open, {"ip": "1.2.3.4"}, 8265, head)
    assert not admits(policy, {"ip": "1.2.3.4"}, 8000, head)
    assert admits(policy, {"pod": {}, "namespace": "x"}, 8000, {"app": "not-ray"})  # unselected


# --- the gateway --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_the_gateway_is_internal_unless_the_public_overlay_is_chosen(built, name: str) -> None:
    objects = built[name]
    rayservice = the_rayservice(objects)
    service = f"{rayservice['metadata']['name']}-serve-svc"  # the Service KubeRay creates
    serve_port = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["http_options"]["port"]
    gateways = [o for o in objects if o["kind"] == "Gateway"]
    if name == "prod-incremental":  # KubeRay runs the gateway of incremental upgrades
        assert gateways == []
        options = rayservice["spec"]["upgradeStrategy"]["clusterUpgradeOptions"]
        assert options["gatewayClassName"] == INTERNAL
    else:
        (gateway,) = gateways
        route = one(objects, "HTTPRoute")
        assert route["spec"]["parentRefs"] == [{"name": gateway["metadata"]["name"]}]
        (rule,) = route["spec"]["rules"]
        assert rule["backendRefs"] == [{"name": service, "port": serve_port}]
        if name == "prod-public":
            assert gateway["spec"]["gatewayClassName"] == EXTERNAL
            assert [lis["protocol"] for lis in gateway["spec"]["listeners"]] == ["HTTPS"]
            assert gateway["spec"]["addresses"]
        else:
            assert gateway["spec"]["gatewayClassName"] == INTERNAL
    check = one(objects, "HealthCheckPolicy")["spec"]
    assert check["targetRef"] == {"group": "", "kind": "Service", "name": service}
    assert check["default"]["config"]["httpHealthCheck"]["requestPath"] == "/-/healthz"
    backend = one(objects, "GCPBackendPolicy")["spec"]
    assert backend["targetRef"] == check["targetRef"]
    # The load balancer waits as long as the ingress lets a request run.
    ingress = the_ingress(rayservice)
    assert backend["default"]["timeoutSec"] >= ingress.max_request_timeout_s


# --- pods without privileges --------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_pods_run_without_privileges(built, name: str) -> None:
    rayservice = the_rayservice(built[name])
    restricted = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    for group in groups(rayservice):
        pod = group.template["spec"]
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] > 0, group.name
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in group.containers:
            assert container["securityContext"] == restricted, group.name
        # Only the head (its autoscaler sidecar) talks to the Kubernetes API.
        assert pod.get("automountServiceAccountToken", True) is group.is_head
    autoscaler = rayservice["spec"]["rayClusterConfig"]["autoscalerOptions"]
    assert autoscaler["securityContext"] == restricted
    labels = one(built[name], "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "baseline"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"
