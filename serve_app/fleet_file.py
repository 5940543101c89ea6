"""The whole fleet file (``serve_config.yaml``), checked as strictly as each application.

Each application's builder validates its own args when Serve deploys it. What no single
builder can see is checked here, over the whole file: a model application is named after
its model and has no route prefix (the ingress reaches it), model names are unique across
the fleet, and some ingress serves the models. ``serve-app check`` runs it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from serve_app.builders import FLEET_BUILDER, INGRESS_BUILDER, MODEL_BUILDER, OURS
from serve_app.config import (
    ConfigError,
    parse_app_config,
    parse_ingress_app,
    parse_model_app,
    parse_pool_app,
)


@dataclass
class FleetFile:
    """What a checked fleet file holds."""

    ingresses: list[str] = field(default_factory=list)
    # Each ingress's max_request_bytes, for checks of the environment (serve-app check).
    max_request_bytes: dict[str, int] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    pools: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def check_fleet(document: Any) -> FleetFile:
    """Every problem of a Serve config holding this project's applications, one line each."""
    found = FleetFile()
    applications = document.get("applications") if isinstance(document, dict) else None
    if not isinstance(applications, list) or not applications:
        found.problems.append("the file has no 'applications' list")
        return found
    for index, app in enumerate(applications):
        if not isinstance(app, dict):
            found.problems.append(f"applications[{index}] is not a mapping")
            continue
        if app.get("import_path") in OURS:
            _check_app(app, index, found)
    names = Counter([*found.models, *found.pools])
    for name, count in sorted(names.items()):
        if count > 1:
            found.problems.append(f"model or pool name '{name}' is used {count} times")
    if (found.models or found.pools) and not found.ingresses:
        found.problems.append(
            f"no ingress application (import_path: {INGRESS_BUILDER}): nothing"
            " would serve the models"
        )
    return found


def _check_app(app: dict[str, Any], index: int, found: FleetFile) -> None:
    name, builder = app.get("name"), app["import_path"]
    where = f"application '{name}' (applications[{index}])"
    try:
        if builder == FLEET_BUILDER:
            config = parse_app_config(app.get("args") or {})
            found.ingresses.append(str(name))
            found.max_request_bytes[str(name)] = config.ingress.max_request_bytes
            found.models += [m.name for m in config.models]
            found.pools += [p.name for p in config.pools]
        elif builder == INGRESS_BUILDER:
            ingress = parse_ingress_app(app.get("args") or {})
            found.ingresses.append(str(name))
            found.max_request_bytes[str(name)] = ingress.max_request_bytes
        else:
            parse = parse_model_app if builder == MODEL_BUILDER else parse_pool_app
            spec = parse(app.get("args") or {})
            (found.models if builder == MODEL_BUILDER else found.pools).append(spec.name)
            if spec.name != name:
                found.problems.append(
                    f"{where}: holds '{spec.name}'; a model's application is named after it"
                )
            # Left out, Serve's route_prefix is "/", the ingress application's own.
            if "route_prefix" not in app or app["route_prefix"] is not None:
                found.problems.append(
                    f"{where}: route_prefix must be null (the ingress application reaches it)"
                )
    except ConfigError as exc:
        found.problems.append(f"{where}: {exc}")
