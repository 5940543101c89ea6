"""The import paths of this project's application builders (``serve_app/app.py``).

A Serve config names each application's builder by its import path; the ingress, the
fleet-file check, the KubeRay renderer and ``default_app`` tell our applications apart by
these strings. Written once here, without importing ``serve_app.app`` (and Ray Serve).
"""

from __future__ import annotations

from typing import Final

# One application holding every model, pool and the ingress (the older layout).
FLEET_BUILDER: Final = "serve_app.app:build_app"
INGRESS_BUILDER: Final = "serve_app.app:build_ingress"
# One application per model and per pool, named after it, beside the ingress's.
MODEL_BUILDER: Final = "serve_app.app:build_model"
POOL_BUILDER: Final = "serve_app.app:build_pool"
OURS: Final = (FLEET_BUILDER, INGRESS_BUILDER, MODEL_BUILDER, POOL_BUILDER)
