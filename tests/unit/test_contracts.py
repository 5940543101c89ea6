"""The names one layer uses for another's code: each is written once, and here checked
against the code it names (a misspelt one would otherwise fail only when used)."""

from __future__ import annotations

import importlib
import inspect

import pytest

from deployments.replica import ModelReplica
from serve_app.builders import OURS
from serve_app.grpc import servicers
from serve_app.grpc.services import METHODS, RPCS, handler_name
from serve_app.ingress import Ingress
from serve_app.replica_api import ReplicaMethod


@pytest.mark.parametrize("method", list(ReplicaMethod))
def test_every_replica_method_the_ingress_calls_is_a_replica_method(
    method: ReplicaMethod,
) -> None:
    assert callable(getattr(ModelReplica, method.value, None)), method


@pytest.mark.parametrize("path", OURS)
def test_every_builder_path_names_a_builder(path: str) -> None:
    module, name = path.split(":")
    assert callable(getattr(importlib.import_module(module), name, None)), path


def test_a_replica_method_binds_a_handle_by_its_plain_name() -> None:
    class Handle:
        def __getattr__(self, name: str) -> tuple[type, str]:
            return type(name), name

    assert ReplicaMethod.MODEL_IO.of(Handle()) == (str, "model_io")


@pytest.mark.parametrize("rpc", RPCS)
def test_every_served_rpc_is_an_ingress_method_over_its_servicer_function(rpc: str) -> None:
    handler = getattr(servicers, handler_name(rpc), None)
    assert callable(handler), f"serve_app.grpc.servicers has no {handler_name(rpc)} for {rpc}"
    method = getattr(Ingress.func_or_class, rpc)
    # Serve passes its gRPC context by this argument's name.
    assert list(inspect.signature(method).parameters) == ["self", "request", "grpc_context"]
    assert method.__name__ == rpc


def test_the_rpc_names_are_the_services_methods_once() -> None:
    assert len(set(RPCS)) == len(RPCS) == sum(len(m) for m in METHODS.values()) == 12
    assert handler_name("GetModelMetadata") == "get_model_metadata"
