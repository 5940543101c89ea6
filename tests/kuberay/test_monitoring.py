"""Observability: the PodMonitoring scrapes every Ray pod's metrics port, and every query of the
Grafana dashboard (kuberay/monitoring/grafana-dashboard.json) reads a metric the service
exports, by the name and labels it is exported with; every metric the service defines is on it.

How names are exported: Ray's metrics agent prefixes ``ray_``; counters get ``_total``,
histograms ``_bucket`` (with ``le``), ``_sum`` and ``_count``; metrics created through
``ray.serve.metrics`` (ours, serve_app/metrics.py) carry Serve's tags ``deployment``,
``replica`` and ``application`` besides their own; the scrape adds target labels.
"""

from __future__ import annotations

import ast
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import ray.serve

from serve_app.metrics import DEFINITIONS
from tests.kuberay.cluster_model import groups, k8s_selector_matches
from tests.kuberay.conftest import KUBERAY_DIR, OVERLAYS, the_rayservice

ALL = ["base", *OVERLAYS]
DASHBOARD = KUBERAY_DIR / "monitoring" / "grafana-dashboard.json"
SERVE_TAGS = ("deployment", "replica", "application")
# Labels Managed Service for Prometheus puts on every scraped series.
GMP_TARGET_LABELS = {
    *("project_id", "location", "cluster", "namespace", "job", "instance", "pod", "container"),
    *("top_level_controller_name", "top_level_controller_type"),
}

# Ray Serve's own metrics the dashboard may read, each for something ours do not measure.
# name -> (kind, tags); each is checked against the installed Ray Serve's source below.
SERVE_METRICS = {
    # Queue depth: requests waiting in a caller (the ingress's handle) for a model's replica.
    "serve_deployment_queued_queries": (
        "gauge", ("deployment", "application", "handle", "actor_id")
    ),
    # Requests in flight at a model's replicas, as the callers count them.
    "serve_num_ongoing_requests_at_replicas": (
        "gauge", ("deployment", "application", "handle", "actor_id")
    ),
    # Healthy replicas per model (deployment).
    "serve_deployment_replica_healthy": ("gauge", ("deployment", "application")),
    # Replica cold start, which a model's load time is only part of.
    "serve_replica_startup_latency_ms": ("histogram", ("deployment", "application")),
}  # fmt: skip
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


@cache
def serve_source_metrics() -> dict[str, tuple[str, tuple[str, ...] | None]]:
    """``name -> (kind, literal tag keys or None)`` of every ``Counter``/``Gauge``/``Histogram``
    that the installed Ray Serve creates with a literal ``serve_*`` name."""
    found: dict[str, tuple[str, tuple[str, ...] | None]] = {}
    for path in Path(ray.serve.__file__).parent.rglob("*.py"):
        text = path.read_text()
        if "tests" in path.parts or not any(f'"{name}"' in text for name in SERVE_METRICS):
            continue
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.Call):
                continue
            kind = getattr(node.func, "attr", getattr(node.func, "id", None))
            if kind not in ("Counter", "Gauge", "Histogram"):
                continue
            args = {kw.arg: kw.value for kw in node.keywords}
            name_node = node.args[0] if node.args else args.get("name")
            if not (
                isinstance(name_node, ast.Constant) and str(name_node.value).startswith("serve_")
            ):
                continue
            try:
                tags = tuple(ast.literal_eval(args["tag_keys"])) if "tag_keys" in args else None
            except ValueError:  # tag keys computed at run time
                tags = None
            found[name_node.value] = (kind.lower(), tags)
    return found


def exported() -> dict[str, set[str]]:
    """Every exported series name the dashboard may use -> the labels it carries."""
    names: dict[str, set[str]] = {}
    own = {name: (kind, (*tags, *SERVE_TAGS)) for name, (kind, _, tags, _) in DEFINITIONS.items()}
    for name, (kind, tags) in {**own, **SERVE_METRICS}.items():
        for suffix in SUFFIXES[kind]:
            labels = set(tags) | ({"le"} if suffix == "_bucket" else set())
            names[f"ray_{name}{suffix}"] = labels
    return names


def queries(dashboard: dict[str, Any]) -> list[str]:
    found = [t["expr"] for p in dashboard["panels"] for t in p.get("targets") or []]
    found += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return found


def query_errors(expr: str, series: dict[str, set[str]], target_labels: set[str]) -> list[str]:
    """Metrics in ``expr`` that are not exported, and labels they do not carry. Metric names
    are the ``ray_*`` words; labels are those of ``{...}`` matchers, ``by``/``without`` and
    ``on``/``ignoring`` clauses and ``label_values(..., label)``."""
    errors = []
    metrics = re.findall(r"\bray_\w+", expr)
    if not metrics:
        errors.append(f"no metric in {expr!r}")
    for metric in metrics:
        if metric not in series:
            errors.append(f"{metric} is not exported")
    known = lambda m: series.get(m, set()) | target_labels  # noqa: E731
    for metric, matchers in re.findall(r"\b(ray_\w+)\{([^}]*)\}", expr):
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
            if label not in known(metric):
                errors.append(f"{metric} has no label {label}")
    grouped = re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr)
    grouped += re.findall(r"label_values\([^,]*,\s*(\w+)\)", expr)
    for labels in grouped:
        for label in filter(None, (s.strip() for s in labels.split(","))):
            for metric in metrics:
                if label not in known(metric):
                    errors.append(f"{metric} has no label {label} (grouped by)")
    return errors


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def target_labels(built) -> set[str]:
    (monitoring,) = [o for o in built["prod"] if o["kind"] == "PodMonitoring"]
    extra = {m["to"] for m in monitoring["spec"].get("targetLabels", {}).get("fromPod") or []}
    return GMP_TARGET_LABELS | extra


def test_the_ray_serve_metrics_on_the_dashboard_exist_in_ray_serve() -> None:
    source = serve_source_metrics()
    for name, (kind, tags) in SERVE_METRICS.items():
        assert name in source, f"Ray Serve {ray.__version__} defines no metric {name}"
        source_kind, source_tags = source[name]
        assert source_kind == kind, name
        assert source_tags is None or set(source_tags) == set(tags), (name, source_tags)


def test_every_dashboard_query_reads_exported_metrics_and_labels(built, dashboard) -> None:
    series, labels = exported(), target_labels(built)
    errors = [e for expr in queries(dashboard) for e in query_errors(expr, series, labels)]
    assert errors == []


def test_every_metric_the_service_defines_is_on_the_dashboard(dashboard) -> None:
    used = {m for expr in queries(dashboard) for m in re.findall(r"\bray_\w+", expr)}
    for name, (kind, *_) in DEFINITIONS.items():
        assert any(f"ray_{name}{suffix}" in used for suffix in SUFFIXES[kind]), name


def test_the_query_check_can_fail(built) -> None:
    series, labels = exported(), target_labels(built)
    assert query_errors("rate(ray_serve_app_requets_total[5m])", series, labels) == [
        "ray_serve_app_requets_total is not exported"
    ]
    assert query_errors("ray_serve_app_requests", series, labels) == [
        "ray_serve_app_requests is not exported"  # a counter is exported with _total
    ]
    assert query_errors(
        'sum by (pool) (ray_serve_app_versions_loaded{version="2"})', series, labels
    ) == [
        "ray_serve_app_versions_loaded has no label version",
        "ray_serve_app_versions_loaded has no label pool (grouped by)",
    ]
    assert query_errors("up", series, labels) == ["no metric in 'up'"]
    share = "sum by (model, version) (rate(ray_serve_app_version_requests_total[5m]))"
    assert (
        query_errors(f"{share} / ignoring (versio) group_left {share}", series, labels)
        == ["ray_serve_app_version_requests_total has no label versio (grouped by)"] * 2
    )  # once per occurrence of the metric in the expression


def test_the_dashboard_is_importable(dashboard) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
        for reference in re.findall(r"\$(\w+)", json.dumps(panel.get("targets", []))):
            assert reference in variables or reference.startswith("__"), reference


@pytest.mark.parametrize("name", ALL)
def test_pod_monitoring_scrapes_every_ray_pod(built, name: str) -> None:
    objects = built[name]
    (monitoring,) = [o for o in objects if o["kind"] == "PodMonitoring"]
    (endpoint,) = monitoring["spec"]["endpoints"]
    rayservice = the_rayservice(objects)
    cluster = rayservice["spec"]["rayClusterConfig"]
    params = [cluster["headGroupSpec"]["rayStartParams"]]
    params += [g["rayStartParams"] for g in cluster["workerGroupSpecs"]]
    for group, start in zip(groups(rayservice), params):
        assert k8s_selector_matches(monitoring["spec"]["selector"], group.pod_labels), group.name
        for mapping in monitoring["spec"]["targetLabels"]["fromPod"]:
            assert mapping["from"] in group.pod_labels
        (container,) = group.containers
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports[endpoint["port"]] == int(start["metrics-export-port"]), group.name
