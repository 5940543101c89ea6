"""The gRPC messages of TF Serving and of the Open Inference Protocol, without TensorFlow.

TF Serving's Python messages (``tensorflow-serving-api``) import TensorFlow's message modules,
and importing any of those runs ``tensorflow/__init__`` (4 s and 600 MB here), which the
ingress must never do. The definitions are inside those modules as serialized
``FileDescriptorProto``s: this module reads them from the installed files, without running
them, into a private descriptor pool and builds the message classes from it (25 ms). The
Open Inference Protocol's messages come from ``tritonclient``'s ``service_pb2`` the same way.

A private pool keeps these classes apart from the real modules' where both are in one process
(the tests import TensorFlow): the same names in the default pool would clash.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from functools import cache
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pool, message_factory

# The modules whose messages the gRPC services use; their imports are followed from here.
TFSERVING_MODULES = (
    "tensorflow_serving.apis.predict_pb2",
    "tensorflow_serving.apis.inference_pb2",  # classification, regression, input
    "tensorflow_serving.apis.get_model_metadata_pb2",  # SignatureDefMap (meta_graph.proto)
    "tensorflow_serving.apis.get_model_status_pb2",
)
OIP_MODULES = ("tritonclient.grpc.service_pb2",)
# Where each top-level package comes from, for the error when one is missing.
_DISTRIBUTIONS = {
    "tensorflow_serving": "tensorflow-serving-api (in the cpu extra: make install-run)",
    "tensorflow": "tensorflow-cpu or tensorflow",
    "tritonclient": "tritonclient",
}


def message(full_name: str) -> Any:
    """The message class of a fully qualified name, e.g. ``tensorflow.serving.ModelSpec``."""
    return message_factory.GetMessageClass(_pool().FindMessageTypeByName(full_name))


def enum_values(message_name: str, field: str) -> dict[str, int]:
    """An enum field's values by name, e.g. ``TensorProto.dtype``: ``{"DT_FLOAT": 1, ...}``."""
    descriptor = _pool().FindMessageTypeByName(message_name).fields_by_name[field].enum_type
    return {value.name: value.number for value in descriptor.values}


@cache
def _pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    loaded: set[str] = set()
    for module in (*TFSERVING_MODULES, *OIP_MODULES):
        _add(pool, module, loaded)
    return pool


def _add(pool: descriptor_pool.DescriptorPool, module: str, loaded: set[str]) -> None:
    """Add a generated module's file to ``pool``, after the files it imports."""
    if module in loaded:
        return
    loaded.add(module)
    if module.startswith("google.protobuf."):  # protobuf's own: importing them is cheap
        pool.AddSerializedFile(importlib.import_module(module).DESCRIPTOR.serialized_pb)
        return
    tree = ast.parse(_source(module).read_text(encoding="utf-8"))
    serialized = None
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.endswith("_pb2"):  # from x.y_pb2 import *
                _add(pool, node.module, loaded)
            for alias in node.names:
                if alias.name.endswith("_pb2"):  # from x import y_pb2
                    _add(pool, f"{node.module}.{alias.name}", loaded)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile":
            serialized = ast.literal_eval(node.args[0])
    if not isinstance(serialized, bytes):
        raise ImportError(f"{module} holds no serialized file descriptor (not protoc's output)")
    pool.AddSerializedFile(serialized)


def _source(module: str) -> Path:
    """The file of a module inside an installed package, found without importing the package
    (``find_spec`` of a submodule would import its parents: ``tensorflow/__init__``)."""
    top, _, rest = module.partition(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the gRPC services need {_DISTRIBUTIONS.get(top, top)} installed (for {module})"
        )
    for location in spec.submodule_search_locations:
        path = Path(location, *rest.split(".")).with_suffix(".py")
        if path.is_file():
            return path
    raise ImportError(f"{module} not found in the installed {top} package")
