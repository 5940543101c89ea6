"""The model replica's methods that the ingress calls through Serve deployment handles.

A handle call names the replica method it runs (``handle.<method>.remote(...)``): a name
misspelt on the ingress's side would fail only when a request makes that call. Each is
named once here; ``tests/unit/test_contracts.py`` checks every one against
``deployments.replica.ModelReplica``, which the ingress does not import.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle


class ReplicaMethod(StrEnum):
    """A ``ModelReplica`` method the ingress calls."""

    PREDICT_MANY = "predict_many"
    GENERATE_STREAM = "generate_stream"
    MODEL_STATUS = "model_status"
    MODEL_METADATA = "model_metadata"
    MODEL_IO = "model_io"
    MODEL_STATS = "model_stats"
    LIST_MODELS = "list_models"
    POOL_REPORT = "pool_report"

    def of(self, handle: DeploymentHandle) -> DeploymentHandle:
        """``handle`` bound to this method (Serve's ``handle.<method>``)."""
        # The plain str, so what crosses to the replica is what a literal name would send.
        return getattr(handle, self.value)
