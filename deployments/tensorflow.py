"""TensorFlow models: SavedModel directories (every signature) and Keras ``model.keras`` files.

SavedModels load the way TF Serving loads them: a TF1 export (no object graph) runs in a
graph and a session (``deployments/tf_session.py``), a TF2 export through TF2's loader.
A SavedModel's ``assets.extra/tf_serving_warmup_requests`` is replayed before the version
serves (``deployments/tf_warmup.py``). TensorFlow is imported inside ``load`` so that the
ingress and the app builder never pay for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deployments.servable import DEFAULT_SIGNATURE, Servable, StopCheck
from deployments.signature import UNBATCHED_ROW, Signature, TensorSpec
from deployments.tf_signatures import (
    PREDICT_METHOD,
    check_example_signature,
    serialized_examples,
)
from deployments.tf_warmup import replay_warmup, warmup_file
from serve_app.errors import InvalidInput, ModelLoadError
from serve_app.request import CLASSIFY, PREDICT, REGRESS

SAVED_MODEL_FILE = "saved_model.pb"
# Keras files as people have them: Keras 3 files under any name, and legacy HDF5 files.
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


class TensorFlowModel(Servable):
    """A SavedModel (signatures as saved, Keras-written ones included) or a Keras file
    (``*.keras`` or legacy HDF5 ``*.h5``; one ``serving_default``)."""

    @classmethod
    def capabilities(cls, task: str | None, options: dict[str, Any]) -> frozenset[str]:
        # classify/regress need a signature of that kind: the replica checks per request.
        return frozenset({PREDICT, CLASSIFY, REGRESS})

    def load(self, path: Path) -> None:
        from deployments.devices import setup_tensorflow

        # Before TF touches a GPU: its share's memory limit (or growth), or no GPU at all.
        self.device_info = setup_tensorflow(self.name, self.spec.resources)
        import tensorflow as tf

        self._tf = tf
        self._path = path
        self._keras_model: Any = None
        self._session: Any = None
        self._functions: dict[str, Any] = {}
        self._signature_json: dict[str, Any] | None = None
        if (path / SAVED_MODEL_FILE).is_file():
            self._load_saved_model(path)
        else:
            self._load_keras(keras_file(self.name, self.spec.uri, path))

    def _load_keras(self, file: Path) -> None:
        import keras

        # safe_mode refuses artifacts that would run arbitrary Python (lambda layers, pickles),
        # in Keras 3 files and in legacy HDF5 files alike.
        model = keras.saving.load_model(file, safe_mode=True, compile=False)
        inputs = {
            t.name: TensorSpec(t.name, _np_dtype(t.dtype), _dims(t.shape)) for t in model.inputs
        }
        names = _keras_output_names(model)
        outputs = {
            n: TensorSpec(n, _np_dtype(t.dtype), _dims(t.shape))
            for n, t in zip(names, model.outputs)
        }
        self._keras_model = model
        self.platform = "tensorflow_keras"
        self._signatures = {DEFAULT_SIGNATURE: Signature(DEFAULT_SIGNATURE, inputs, outputs)}

    def _load_saved_model(self, path: Path) -> None:
        meta_graph = _serving_meta_graph(self.name, path / SAVED_MODEL_FILE)
        # Metadata answers with the SavedModel's own SignatureDefs, exactly as TF Serving does.
        self._signature_json = _signature_defs_json(meta_graph)
        self.platform = "tensorflow_savedmodel"
        methods = {n: d.get("method_name", PREDICT_METHOD) for n, d in self._signature_json.items()}
        if len(meta_graph.object_graph_def.nodes) > 0:
            self._signatures = self._load_tf2(path, methods)
        else:
            self._signatures = self._load_tf1(path, methods)
        if not self._signatures:
            raise ModelLoadError(f"model '{self.name}': the SavedModel has no servable signatures")

    def _load_tf2(self, path: Path, methods: dict[str, str]) -> dict[str, Signature]:
        """A TF2 export: its signatures as the concrete functions TF2's loader makes."""
        loaded = self._tf.saved_model.load(str(path))
        self._saved_model = loaded  # keeps the signature functions' variables alive
        self._functions = dict(loaded.signatures)
        signatures = {}
        for name, fn in self._functions.items():
            inputs = {
                key: TensorSpec(key, _np_dtype(spec.dtype), _dims(spec.shape))
                for key, spec in fn.structured_input_signature[1].items()
            }
            outputs = {
                key: TensorSpec(key, _np_dtype(t.dtype), _dims(t.shape))
                for key, t in fn.structured_outputs.items()
            }
            signatures[name] = _signature(name, inputs, outputs, methods)
        return signatures

    def _load_tf1(self, path: Path, methods: dict[str, str]) -> dict[str, Signature]:
        """A TF1 export: its graph in a session, every dense signature callable."""
        from deployments.tf_session import SessionBundle

        self._session = SessionBundle(self._tf, path)
        signatures = {}
        for name, graph_signature in self._session.signatures.items():
            inputs = {k: TensorSpec(k, t.dtype, t.shape) for k, t in graph_signature.inputs.items()}
            outputs = {
                k: TensorSpec(k, t.dtype, t.shape) for k, t in graph_signature.outputs.items()
            }
            signatures[name] = _signature(name, inputs, outputs, methods)
        return signatures

    def signatures(self) -> dict[str, Signature]:
        return self._signatures

    def signature_defs(self) -> dict[str, Any]:
        # SavedModels answer with their own SignatureDefs, exactly as TF Serving does.
        return self._signature_json or super().signature_defs()

    def example_inputs(
        self, signature: Signature, method: str, examples: list[dict[str, Any]]
    ) -> dict[str | None, np.ndarray]:
        """Serialized ``tf.Example``s (JSON features) for a classify/regress signature."""
        check_example_signature(self.name, signature, method)
        serialized = [_to_example(self._tf, features).SerializeToString() for features in examples]
        return serialized_examples(serialized)

    def infer(
        self,
        signature: str,
        inputs: dict[str, np.ndarray],
        parameters: dict[str, Any],
        stop: StopCheck | None = None,
    ) -> dict[str, np.ndarray]:
        if self._keras_model is not None:
            return self._infer_keras(inputs)
        if not self._signatures[signature].batched:
            return self._infer_rows(signature, inputs)
        return self._call(signature, inputs)

    def _infer_rows(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """An unbatched signature: one call per row (request), in order; rows stacked back."""
        rows = inputs[UNBATCHED_ROW].shape[0]
        answers = [
            self._call(signature, {n: a[row] for n, a in inputs.items() if n != UNBATCHED_ROW})
            for row in range(rows)
        ]
        return {name: np.stack([answer[name] for answer in answers]) for name in answers[0]}

    def _call(self, signature: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One model call; TensorFlow's errors become TF Serving's status codes."""
        from deployments.tf_errors import serving_error

        tf = self._tf
        try:
            if self._session is not None:
                return self._session.run(signature, feeds)
            tensors = {name: tf.convert_to_tensor(value) for name, value in feeds.items()}
            outputs = self._functions[signature](**tensors)
            return {name: tensor.numpy() for name, tensor in outputs.items()}
        except tf.errors.OpError as exc:
            raise serving_error(self.name, signature, exc) from None

    def _infer_keras(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self._signatures[DEFAULT_SIGNATURE]
        feed: Any = inputs[next(iter(spec.inputs))] if len(spec.inputs) == 1 else inputs
        result = self._keras_model.predict_on_batch(feed)
        arrays = result if isinstance(result, (list, tuple)) else [result]
        if isinstance(result, dict):
            return {name: np.asarray(value) for name, value in result.items()}
        return {name: np.asarray(value) for name, value in zip(spec.outputs, arrays)}

    def warm_up(self) -> None:
        """Replay the SavedModel's TF Serving warm-up requests, if it ships any (as TF Serving
        does, before the version is AVAILABLE); otherwise the made-up load check."""
        if warmup_file(self._path).is_file():
            replay_warmup(self, self._path)
        else:
            super().warm_up()

    def release(self) -> None:
        if getattr(self, "_session", None) is not None:
            self._session.close()
        super().release()


def keras_file(model: str, uri: str, path: Path) -> Path:
    """The one Keras file of a version directory (``model.keras`` first), or why none."""
    found = sorted(p for p in path.iterdir() if p.suffix.lower() in KERAS_SUFFIXES)
    preferred = [p for p in found if p.name == "model.keras"]
    if preferred:
        return preferred[0]
    if len(found) == 1:
        return found[0]
    held = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
    if not found:
        raise ModelLoadError(
            f"model '{model}': no {SAVED_MODEL_FILE} (SavedModel) or Keras file"
            f" ({', '.join('*' + s for s in KERAS_SUFFIXES)}) in version directory"
            f" '{path.name}' of {uri} (it holds: {held})"
        )
    raise ModelLoadError(
        f"model '{model}': version directory '{path.name}' of {uri} holds {len(found)} Keras"
        f" files ({', '.join(p.name for p in found)}); keep one, or name it model.keras"
    )


def _to_example(tf: Any, features: dict[str, Any]) -> Any:
    """A ``tf.train.Example`` from JSON features: numbers, strings, b64 bytes or lists of them."""
    feature = {}
    for name, value in features.items():
        values = value if isinstance(value, list) else [value]
        if all(isinstance(v, int) for v in values):  # bool is an int too
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
        elif all(isinstance(v, (str, bytes)) for v in values):
            encoded = [v.encode() if isinstance(v, str) else v for v in values]
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=encoded))
        else:
            raise InvalidInput(
                f"feature '{name}' must be numbers, strings or b64 values (or a list of one kind)"
            )
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _signature(
    name: str, inputs: dict[str, TensorSpec], outputs: dict[str, TensorSpec], methods: dict
) -> Signature:
    method = methods.get(name, PREDICT_METHOD)
    return Signature(
        name, inputs, outputs, method_name=method, batched=takes_batches(inputs, outputs)
    )


def takes_batches(inputs: dict[str, TensorSpec], outputs: dict[str, TensorSpec]) -> bool:
    """Whether rows of many requests may share one call: every tensor has a free dimension 0.

    No inputs, a scalar or a fixed dimension 0 (TF2's ``[1]``) means the function takes what
    one request sends and no more; a scalar output (a counter, a reduction over the batch)
    would mix requests. Unknown ranks are taken as batches (serialized Examples).
    """
    if not inputs:
        return False
    for spec in (*inputs.values(), *outputs.values()):
        if spec.shape is not None and (len(spec.shape) == 0 or spec.shape[0] != -1):
            return False
    return True


def _np_dtype(dtype: Any) -> np.dtype:
    """TF/Keras dtype -> numpy dtype; strings map to ``object``."""
    name = getattr(dtype, "name", str(dtype))
    return np.dtype(object) if name == "string" else np.dtype(name)


def _dims(shape: Any) -> tuple[int, ...] | None:
    """A TF/Keras shape with unknown dimensions as -1; None for unknown rank."""
    if getattr(shape, "rank", 0) is None:
        return None
    dims = shape.as_list() if hasattr(shape, "as_list") else shape
    return tuple(-1 if d is None else int(d) for d in dims)


def _keras_output_names(model: Any) -> list[str]:
    names = getattr(model, "output_names", None)
    if names and len(names) == len(model.outputs):
        return list(names)
    # A model loaded from HDF5 has no output_names: its output layers' names instead.
    layers = [getattr(getattr(t, "_keras_history", None), "operation", None) for t in model.outputs]
    named = [getattr(layer, "name", None) for layer in layers]
    if all(named) and len(set(named)) == len(named):
        return named
    return [t.name.split("/")[0] for t in model.outputs]


def _serving_meta_graph(model: str, pb_file: Path) -> Any:
    """The SavedModel's MetaGraph tagged ``serve`` (TF Serving's default tag set)."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString(pb_file.read_bytes())
    except DecodeError as exc:
        raise ModelLoadError(
            f"model '{model}': {pb_file.name} is not a SavedModel: {exc}"
        ) from None
    for meta_graph in proto.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return meta_graph
    tags = [list(m.meta_info_def.tags) for m in proto.meta_graphs]
    raise ModelLoadError(
        f"model '{model}': the SavedModel has no MetaGraph tagged 'serve' (tag sets: {tags})"
    )


def _signature_defs_json(meta_graph: Any) -> dict[str, Any]:
    """The MetaGraph's SignatureDefs in TF Serving's JSON form (defaults included), every one
    of them, ``__saved_model_init_op`` too, as TF Serving answers metadata."""
    from google.protobuf import json_format

    signature_defs = meta_graph.signature_def
    return {
        name: json_format.MessageToDict(
            signature_defs[name],
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
        for name in signature_defs
    }
