"""The default fleet as an Application object, for tools that import one (``serve build``).

``serve build serve_app.default_app:app`` needs an Application, not a builder; this reads the
fleet of ``serve_config.yaml`` (or of the file named by ``SERVE_APP_CONFIG``) and builds it
as one application (``build_app``): its models, whether written as one application per model
(``build_model`` / ``build_pool`` beside ``build_ingress``) or in one ``build_app``.

Only the args travel: each model application's ``runtime_env`` (thread counts) and
``logging_config`` are Serve's, not ours, and one application has one of each. To deploy
the fleet as tuned, deploy ``serve_config.yaml`` itself (it is a complete Serve config).
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from serve_app.app import build_app
from serve_app.builders import FLEET_BUILDER, INGRESS_BUILDER, MODEL_BUILDER, POOL_BUILDER

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "serve_config.yaml"


def fleet_args(config_file: str | os.PathLike | None = None) -> dict:
    """The fleet of a Serve config as ``build_app`` args: ``models``, ``pools``, ``ingress``
    (and the first ``store`` given)."""
    path = Path(config_file or os.environ.get("SERVE_APP_CONFIG") or DEFAULT_CONFIG)
    config = yaml.safe_load(path.read_text())
    applications = config.get("applications", [])
    for application in applications:
        if application.get("import_path") == FLEET_BUILDER:
            return application.get("args") or {}
    fleet: dict = {"models": [], "pools": []}
    for application in applications:
        args = dict(application.get("args") or {})
        builder = application.get("import_path")
        if builder in (MODEL_BUILDER, POOL_BUILDER):
            store = args.pop("store", None)
            if store is not None:
                fleet.setdefault("store", store)
            fleet["models" if builder == MODEL_BUILDER else "pools"].append(args)
        elif builder == INGRESS_BUILDER:
            fleet["ingress"] = args
    if not fleet["models"] and not fleet["pools"]:
        raise ValueError(f"{path} has no model or pool applications of serve_app.app")
    return fleet


app = build_app(fleet_args())
