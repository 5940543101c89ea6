"""The names one layer uses for another's code: each is written once, and here checked
against the code it names (a misspelt one would otherwise fail only when used)."""

from __future__ import annotations

import importlib

import pytest

from deployments.replica import ModelReplica
from serve_app.builders import OURS
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
