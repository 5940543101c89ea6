"""A rendered RayService's fleet, read from its ``serveConfigV2`` with the builders' own parsers
(defaults filled in, as the replicas get them), in either layout of the Serve config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from serve_app.builders import FLEET_BUILDER, INGRESS_BUILDER, MODEL_BUILDER, POOL_BUILDER
from serve_app.config import (
    IngressSpec,
    ModelSpec,
    PoolSpec,
    parse_app_config,
    parse_ingress_app,
    parse_model_app,
    parse_pool_app,
)


@dataclass
class Fleet:
    """The models, pools and ingresses one Serve config deploys."""

    models: list[ModelSpec] = field(default_factory=list)
    pools: list[PoolSpec] = field(default_factory=list)
    ingresses: list[IngressSpec] = field(default_factory=list)


def serve_config_of(rayservice: dict[str, Any]) -> dict[str, Any]:
    """The Serve config a RayService deploys."""
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])


def applications(serve_config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The applications of a Serve config, by name."""
    return {app["name"]: app for app in serve_config["applications"]}


def fleet_of(serve_config: dict[str, Any]) -> Fleet:
    """Every model, pool and ingress of the project's applications, parsed as they deploy."""
    fleet = Fleet()
    for app in serve_config["applications"]:
        builder, args = app["import_path"], app.get("args") or {}
        if builder == FLEET_BUILDER:
            config = parse_app_config(args)
            fleet.models += config.models
            fleet.pools += config.pools
            fleet.ingresses.append(config.ingress)
        elif builder == INGRESS_BUILDER:
            fleet.ingresses.append(parse_ingress_app(args))
        elif builder == MODEL_BUILDER:
            fleet.models.append(parse_model_app(args))
        elif builder == POOL_BUILDER:
            fleet.pools.append(parse_pool_app(args))
    return fleet


def the_ingress(rayservice: dict[str, Any]) -> IngressSpec:
    """The one ingress of a rendered RayService."""
    (ingress,) = fleet_of(serve_config_of(rayservice)).ingresses
    return ingress
