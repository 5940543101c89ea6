"""The framework registry: each framework is one servable module, registered here by name.

The registry line is an import path, so that reading a config (in the ingress, in
``serve-app check``) imports only the framework's module, never TensorFlow, torch or
ONNX Runtime: a servable imports its framework inside ``load``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deployments.servable import Servable

FRAMEWORKS: dict[str, str] = {
    "tensorflow": "deployments.tensorflow:TensorFlowModel",
    "transformers": "deployments.transformers:TransformersModel",
    "onnx": "deployments.onnx:OnnxModel",
    "python": "deployments.python_model:PythonModel",
}


def framework_names() -> list[str]:
    """The frameworks a model may name, in the registry's order."""
    return list(FRAMEWORKS)


def servable_class(framework: str) -> type[Servable]:
    """The ``Servable`` subclass of a registered framework (KeyError if there is none)."""
    module, _, name = FRAMEWORKS[framework].partition(":")
    return getattr(importlib.import_module(module), name)
