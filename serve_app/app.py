"""The application builder: ``import_path: serve_app.app:build_app`` in ``serve_config.yaml``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.serve import Application
from ray.serve.deployment import Deployment

from serve_app.config import AppConfig, ModelSpec, StoreSpec, parse_app_config

INGRESS_NAME = "Ingress"  # capitalised, so it can never clash with a (lowercase) model name
# A load failure is rarely transient; three tries, then `serve status` shows the reason.
MAX_LOAD_ATTEMPTS = 3


def build_app(args: dict[str, Any]) -> Application:
    """One deployment per model, named after it, and the ingress bound to a name->handle map."""
    config = parse_app_config(args)
    handles = {
        spec.name: model_deployment(spec).bind(
            spec_for_replica(spec, config.store), spec.hot_settings().model_dump()
        )
        for spec in config.models
    }
    kinds = {spec.name: spec.task or spec.framework for spec in config.models}
    ingress = _ingress_deployment(config)
    return ingress.bind(handles, kinds, config.ingress.model_dump())


def model_deployment(spec: ModelSpec) -> Deployment:
    """The Serve deployment of one model, with its resources, replicas and hot settings."""
    if spec.framework == "tensorflow":
        from deployments.tensorflow import TensorFlowDeployment as deployment
    else:
        from deployments.transformers import TransformersDeployment as deployment
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
    if spec.max_queued_requests is not None:
        options["max_queued_requests"] = spec.max_queued_requests
    if spec.autoscaling is not None:
        options["autoscaling_config"] = spec.autoscaling.model_dump(exclude_none=True)
    else:
        options["num_replicas"] = spec.num_replicas or 1
    return deployment.options(**options)


def spec_for_replica(spec: ModelSpec, store: StoreSpec | None = None) -> dict[str, Any]:
    """Load settings with a local ``uri`` made absolute, so replicas need not share our cwd.

    The app's ``store`` settings (cache directory, limits) travel with them under ``store``;
    a relative ``cache_dir`` is made absolute here too, while ``~`` and an unset one are left
    for the replica's machine to resolve.
    """
    settings = spec.load_settings()
    if "://" not in spec.uri:
        settings["uri"] = str(Path(spec.uri).expanduser().resolve())
    store = store or StoreSpec()
    cache_dir = store.cache_dir
    if cache_dir is not None and not cache_dir.startswith("~"):
        store = store.model_copy(update={"cache_dir": str(Path(cache_dir).resolve())})
    settings["store"] = store.model_dump()
    return settings


def _ingress_deployment(config: AppConfig) -> Deployment:
    from serve_app.ingress import Ingress

    return Ingress.options(
        name=INGRESS_NAME,
        num_replicas=config.ingress.num_replicas,
        ray_actor_options={"num_cpus": config.ingress.num_cpus},
        max_ongoing_requests=1000,
    )
