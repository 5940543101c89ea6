"""The default fleet as an Application object, for tools that import one (``serve build``).

``serve build serve_app.default_app:app`` needs an Application, not a builder; this reads the
args of ``serve_config.yaml`` (or the file named by ``SERVE_APP_CONFIG``) and builds it.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from serve_app.app import build_app

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "serve_config.yaml"


def fleet_args(config_file: str | os.PathLike | None = None) -> dict:
    """The ``args`` of the application built by ``serve_app.app:build_app`` in a Serve config."""
    path = Path(config_file or os.environ.get("SERVE_APP_CONFIG") or DEFAULT_CONFIG)
    config = yaml.safe_load(path.read_text())
    for application in config.get("applications", []):
        if application.get("import_path") == "serve_app.app:build_app":
            return application.get("args") or {}
    raise ValueError(f"{path} has no application with import_path serve_app.app:build_app")


app = build_app(fleet_args())
