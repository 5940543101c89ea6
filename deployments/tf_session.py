"""A TF1 SavedModel in a graph and a session, the way TF Serving runs every SavedModel.

TF2's loader turns each signature into a function and refuses what functions cannot hold:
reference variables (TF Serving's stateful ``saved_model_counter``) and graphs whose old
shape annotations fail today's shape checks (``saved_model_half_plus_three``'s scalar
serialized-Example input). A session runs such graphs as they were written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SERVE_TAG = "serve"


@dataclass(frozen=True)
class GraphTensor:
    """A signature's tensor in the graph: its name there, numpy dtype and static shape."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...] | None  # None: unknown rank; -1: unknown dimension


@dataclass(frozen=True)
class GraphSignature:
    """A SignatureDef resolved against the graph (dense tensors only)."""

    inputs: dict[str, GraphTensor]
    outputs: dict[str, GraphTensor]


class SessionBundle:
    """The ``serve`` MetaGraph of a SavedModel, loaded into its own graph and session."""

    def __init__(self, tf: Any, path: Path) -> None:
        self._tf = tf
        self.graph = tf.Graph()
        # No config: TF2 hands the session the process's device settings (a GPU share's
        # memory limit set by deployments/devices.py), as it does for eager code.
        self.session = tf.compat.v1.Session(graph=self.graph)
        try:
            with self.graph.as_default():
                self.meta_graph = tf.compat.v1.saved_model.loader.load(
                    self.session, [SERVE_TAG], str(path)
                )
        except Exception:
            self.session.close()
            raise
        self.signatures = self._resolve_signatures()
        self._callables: dict[str, tuple[Any, list[str]]] = {}

    def _resolve_signatures(self) -> dict[str, GraphSignature]:
        """Every signature whose tensors are dense graph tensors (``__`` entries left out)."""
        resolved = {}
        for name, signature_def in self.meta_graph.signature_def.items():
            if name.startswith("__"):
                continue  # __saved_model_init_op runs at load; it is not for clients
            try:
                inputs = {k: self._tensor(v) for k, v in signature_def.inputs.items()}
                outputs = {k: self._tensor(v) for k, v in signature_def.outputs.items()}
            except (KeyError, ValueError):
                continue  # sparse or composite tensors, or an operation: not servable here
            resolved[name] = GraphSignature(inputs, outputs)
        return resolved

    def _tensor(self, info: Any) -> GraphTensor:
        """The graph's own dtype and shape: old exports' TensorInfos may be wrong (TF Serving
        feeds by name and lets the graph decide, as this does)."""
        if info.WhichOneof("encoding") != "name":
            raise KeyError(info.WhichOneof("encoding"))
        tensor = self.graph.get_tensor_by_name(info.name)
        dtype = tensor.dtype.base_dtype  # reference variables' outputs are *_ref
        numpy_dtype = np.dtype(object) if dtype.name == "string" else np.dtype(dtype.as_numpy_dtype)
        shape = None
        if tensor.shape.rank is not None:
            shape = tuple(-1 if d is None else int(d) for d in tensor.shape.as_list())
        return GraphTensor(info.name, numpy_dtype, shape)

    def run(self, signature: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One session run of a signature: every output, by the signature's output names."""
        call, feed_names = self._callable(signature)
        values = call(*[feeds[name] for name in feed_names])
        outputs = self.signatures[signature].outputs
        return {name: np.asarray(value) for name, value in zip(outputs, values)}

    def _callable(self, signature: str) -> tuple[Any, list[str]]:
        """A callable made once per signature: feeds and fetches by tensor name."""
        if signature not in self._callables:
            from tensorflow.core.protobuf import config_pb2

            spec = self.signatures[signature]
            options = config_pb2.CallableOptions()
            feed_names = list(spec.inputs)
            options.feed.extend(spec.inputs[name].name for name in feed_names)
            options.fetch.extend(tensor.name for tensor in spec.outputs.values())
            # Session.make_callable checks feeds against the graph's static shapes in Python;
            # TF Serving's C++ session does not, so old graphs with loose annotations (a
            # scalar placeholder fed a batch of Examples) run here as they run there.
            call = self.session._make_callable_from_options(options)
            self._callables[signature] = (call, feed_names)
        return self._callables[signature]

    def close(self) -> None:
        """Release the session's resources (variables, device memory)."""
        self._callables.clear()
        self.session.close()
