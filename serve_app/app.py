"""The application builder: ``import_path: serve_app.app:build_app`` in ``serve_config.yaml``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray.serve import Application
from ray.serve.deployment import Deployment

from serve_app.autoscaling import POLICY as AUTOSCALING_POLICY
from serve_app.config import (
    AppConfig,
    ConfigError,
    IngressSpec,
    ModelSpec,
    PoolSpec,
    StoreSpec,
    parse_app_config,
    parse_ingress_app,
    parse_model_app,
    parse_pool_app,
)
from serve_app.errors import ModelLoadError

logger = logging.getLogger("ray.serve")

INGRESS_NAME = "Ingress"  # capitalised, so it can never clash with a (lowercase) model name
# A load failure is rarely transient; three tries, then `serve status` shows the reason.
MAX_LOAD_ATTEMPTS = 3


def build_app(args: dict[str, Any]) -> Application:
    """One deployment per model and per pool, named after it, and the ingress bound to them."""
    config = parse_app_config(args)
    check_pool_names(config)
    handles = {
        spec.name: model_deployment(spec).bind(
            spec_for_replica(spec, config.store), spec.hot_settings().model_dump()
        )
        for spec in config.models
    }
    routes = {spec.name: route_settings(spec) for spec in config.models}
    pools = {
        pool.name: model_deployment(pool).bind(
            spec_for_replica(pool, config.store), pool.hot_settings().model_dump()
        )
        for pool in config.pools
    }
    pool_settings = {
        pool.name: {
            "kind": pool.kind,
            "discovery_interval_s": pool.discovery_interval_s,
            "route": route_settings(pool),
        }
        for pool in config.pools
    }
    ingress = _ingress_deployment(config.ingress)
    return ingress.bind(handles, routes, config.ingress.model_dump(), pools, pool_settings)


def build_model(args: dict[str, Any]) -> Application:
    """One model's own application (name it after the model, ``route_prefix: null``): the
    ingress application finds it and routes to it. Changing it restarts only its replicas."""
    app = parse_model_app(args)
    return model_deployment(app).bind(
        spec_for_replica(app, app.store), app.hot_settings().model_dump()
    )


def build_pool(args: dict[str, Any]) -> Application:
    """One model pool's own application (named after the pool, ``route_prefix: null``)."""
    app = parse_pool_app(args)
    return model_deployment(app).bind(
        spec_for_replica(app, app.store), app.hot_settings().model_dump()
    )


def build_ingress(args: dict[str, Any] | None = None) -> Application:
    """The ingress application alone: it serves every model and pool application deployed
    beside it (``build_model``, ``build_pool``), as they come and go."""
    spec = parse_ingress_app(args or {})
    return _ingress_deployment(spec).bind({}, {}, spec.model_dump(), {}, {})


def route_settings(spec: ModelSpec | PoolSpec) -> dict[str, Any]:
    """What the ingress needs to know of a model (or pool) to route and coalesce for it."""
    return {
        "kind": spec.kind,
        "capabilities": sorted(spec.capabilities),
        "json_instances": spec.json_instances,
        "max_batch_size": spec.batching.max_batch_size,
        "max_queued_requests": spec.max_queued_requests,
    }


def model_deployment(spec: ModelSpec | PoolSpec) -> Deployment:
    """The Serve deployment of one model or pool (named after it), whatever its framework:
    its resources, replicas and hot settings."""
    from deployments.replica import ModelDeployment

    return ModelDeployment.options(**_deployment_options(spec))


def check_pool_names(config: AppConfig) -> None:
    """Refuse a fleet where a pool's model has the name of a dedicated model or of a model in
    an earlier pool. (A clashing model added later is skipped by the ingress, with a warning.)
    """
    from serve_app.store import list_pool_models

    owners = {spec.name: f"the dedicated model '{spec.name}'" for spec in config.models}
    for pool in config.pools:
        try:
            names = list_pool_models(_absolute(pool.uri), config.store)
        except ModelLoadError as exc:
            raise ConfigError(f"pool '{pool.name}': {exc}") from None
        except Exception as exc:  # e.g. GCS unreachable from here: the replicas will list it
            logger.warning("pool '%s': cannot list %s now: %s", pool.name, pool.uri, exc)
            continue
        for name in names:
            if name in owners:
                raise ConfigError(
                    f"pool '{pool.name}': model '{name}' in {pool.uri} has the name of"
                    f" {owners[name]}; model names must be unique across the fleet"
                )
            owners[name] = f"a model of pool '{pool.name}'"


def _deployment_options(spec: ModelSpec | PoolSpec) -> dict[str, Any]:
    """Serve options from a model's or a pool's resources, replicas and hot settings."""
    actor_options: dict[str, Any] = {
        "num_cpus": spec.resources.num_cpus,
        "num_gpus": spec.resources.num_gpus,
    }
    if spec.resources.memory is not None:
        actor_options["memory"] = spec.resources.memory
    if spec.resources.accelerator_type is not None:
        actor_options["accelerator_type"] = spec.resources.accelerator_type
    if spec.resources.label_selector:
        actor_options["label_selector"] = dict(spec.resources.label_selector)
    options: dict[str, Any] = {
        "name": spec.name,
        "ray_actor_options": actor_options,
        "user_config": spec.hot_settings().model_dump(),
        "max_ongoing_requests": spec.effective_max_ongoing_requests(),
        "max_constructor_retry_count": MAX_LOAD_ATTEMPTS,
    }
    if spec.autoscaling is not None:
        autoscaling = spec.autoscaling.model_dump(exclude_none=True)
        # Requests arrive coalesced into few handle calls: scale on requests, not calls.
        autoscaling["policy"] = {"policy_function": AUTOSCALING_POLICY}
        options["autoscaling_config"] = autoscaling
    else:
        options["num_replicas"] = spec.num_replicas or 1
    return options


def _absolute(uri: str) -> str:
    return uri if "://" in uri else str(Path(uri).expanduser().resolve())


def spec_for_replica(spec: ModelSpec | PoolSpec, store: StoreSpec | None = None) -> dict[str, Any]:
    """Load settings with a local ``uri`` made absolute, so replicas need not share our cwd.

    The app's ``store`` settings (cache directory, limits) travel with them under ``store``;
    a relative ``cache_dir`` is made absolute here too, while ``~`` and an unset one are left
    for the replica's machine to resolve.
    """
    from deployments.replica import POOL_KEY

    settings = spec.load_settings()
    settings["uri"] = _absolute(spec.uri)
    if isinstance(spec, PoolSpec):
        settings[POOL_KEY] = True
    store = store or StoreSpec()
    cache_dir = store.cache_dir
    if cache_dir is not None and not cache_dir.startswith("~"):
        store = store.model_copy(update={"cache_dir": str(Path(cache_dir).resolve())})
    settings["store"] = store.model_dump()
    return settings


def _ingress_deployment(spec: IngressSpec) -> Deployment:
    from serve_app.ingress import Ingress

    actor_options: dict[str, Any] = {"num_cpus": spec.num_cpus}
    if spec.label_selector:
        actor_options["label_selector"] = dict(spec.label_selector)
    return Ingress.options(
        name=INGRESS_NAME,
        num_replicas=spec.num_replicas,
        ray_actor_options=actor_options,
        max_ongoing_requests=1000,
    )
