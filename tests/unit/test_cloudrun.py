"""The Cloud Run service definition (cloudrun/service.yaml) and the one-container image's entry
point: the fields that keep Ray alive and the fleet served (no Cloud Run or Docker here)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from serve_app.container import container_config

ROOT = Path(__file__).resolve().parents[2]
SERVICE = yaml.safe_load((ROOT / "cloudrun" / "service.yaml").read_text())
TEMPLATE = SERVICE["spec"]["template"]
(CONTAINER,) = TEMPLATE["spec"]["containers"]


def gib(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(Mi|Gi)", quantity).groups()
    return float(number) / (1024 if unit == "Mi" else 1)


def test_the_service_keeps_cpu_and_a_warm_instance_for_ray() -> None:
    assert SERVICE["apiVersion"] == "serving.knative.dev/v1" and SERVICE["kind"] == "Service"
    annotations = TEMPLATE["metadata"]["annotations"]
    assert annotations["run.googleapis.com/cpu-throttling"] == "false"  # CPU always allocated
    assert int(annotations["autoscaling.knative.dev/minScale"]) >= 1
    assert annotations["run.googleapis.com/execution-environment"] == "gen2"
    assert TEMPLATE["spec"]["containerConcurrency"] >= 8  # batching needs concurrent requests


def test_the_startup_probe_waits_for_readiness_on_the_served_port() -> None:
    (port,) = CONTAINER["ports"]
    probe = CONTAINER["startupProbe"]["httpGet"]
    assert probe == {"path": "/v2/health/ready", "port": port["containerPort"]}
    budget = (
        CONTAINER["startupProbe"]["periodSeconds"] * CONTAINER["startupProbe"]["failureThreshold"]
    )
    assert budget >= 180  # Ray's start and three models (cloudrun/README.md, "Measured")
    assert CONTAINER["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"


def test_resources_are_sized_from_the_measured_fleet() -> None:
    limits = CONTAINER["resources"]["limits"]
    guide = (ROOT / "cloudrun" / "README.md").read_text()
    measured = float(re.search(r"peak resident memory: ([\d.]+) GiB", guide)[1])
    assert gib(limits["memory"]) >= 2 * measured
    assert int(limits["cpu"]) >= 2  # the fleet's replicas take 1.75 CPUs with the ingress


def test_the_image_runs_the_entry_point_on_the_services_port() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    last_stage = dockerfile[dockerfile.rindex("\nFROM ") :]
    assert '"serve_app.container"' in last_stage
    assert "serve_app.examples" in last_stage  # the models are built into the image
    (port,) = CONTAINER["ports"]
    assert f"EXPOSE {port['containerPort']}" in last_stage


def test_the_container_config_takes_port_and_keeps_the_fleet(tmp_path: Path) -> None:
    source = tmp_path / "serve_config.yaml"
    source.write_text((ROOT / "serve_config.yaml").read_text())
    written = yaml.safe_load(container_config(source, 8080, 9090).read_text())
    original = yaml.safe_load(source.read_text())
    assert written["http_options"] == {"host": "0.0.0.0", "port": 8080}
    assert written["grpc_options"]["port"] == 9090
    assert written["applications"] == original["applications"]
