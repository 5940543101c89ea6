"""TensorFlow models: SavedModel directories (every signature) and Keras ``model.keras`` files.

TensorFlow is imported inside ``load`` so that the ingress and the app builder never pay for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from deployments.base import ModelDeployment
from deployments.servable import DEFAULT_SIGNATURE, Servable
from deployments.signature import Signature, TensorSpec
from serve_app.errors import InvalidInput, ModelLoadError

KERAS_FILE = "model.keras"
SAVED_MODEL_FILE = "saved_model.pb"
PREDICT_METHOD = "tensorflow/serving/predict"


class TensorFlowModel(Servable):
    """A SavedModel (signatures as saved) or a Keras model (one ``serving_default``)."""

    def load(self, path: Path) -> None:
        from deployments.devices import setup_tensorflow

        # Before TF touches a GPU: its share's memory limit (or growth), or no GPU at all.
        self.device_info = setup_tensorflow(self.name, self.spec.resources)
        import tensorflow as tf

        self._tf = tf
        if (path / KERAS_FILE).is_file():
            self._load_keras(path / KERAS_FILE)
        elif (path / SAVED_MODEL_FILE).is_file():
            self._load_saved_model(path)
        else:
            raise ModelLoadError(
                f"model '{self.name}': no {SAVED_MODEL_FILE} or {KERAS_FILE} in version"
                f" directory '{path.name}' of {self.spec.uri}"
            )

    def _load_keras(self, file: Path) -> None:
        import keras

        # safe_mode refuses artifacts that would run arbitrary Python (lambda layers, pickles).
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
        self._signature_json = None
        self._functions: dict[str, Any] = {}

    def _load_saved_model(self, path: Path) -> None:
        tf = self._tf
        loaded = tf.saved_model.load(str(path))
        self._saved_model = loaded  # keeps the signature functions' variables alive
        self.platform = "tensorflow_savedmodel"
        self._functions = dict(loaded.signatures)
        if not self._functions:
            raise ModelLoadError(f"model '{self.name}': the SavedModel has no signatures")
        self._signature_json = _signature_defs_from_proto(path / SAVED_MODEL_FILE)
        self._signatures = {}
        for name, fn in self._functions.items():
            inputs = {
                key: TensorSpec(key, _np_dtype(spec.dtype), _dims(spec.shape))
                for key, spec in fn.structured_input_signature[1].items()
            }
            outputs = {
                key: TensorSpec(key, _np_dtype(t.dtype), _dims(t.shape))
                for key, t in fn.structured_outputs.items()
            }
            method = self._signature_json.get(name, {}).get("method_name", PREDICT_METHOD)
            self._signatures[name] = Signature(name, inputs, outputs, method_name=method)
        self._keras_model = None

    def signatures(self) -> dict[str, Signature]:
        return self._signatures

    def signature_defs(self) -> dict[str, Any]:
        # SavedModels answer with their own SignatureDefs, exactly as TF Serving does.
        return self._signature_json or super().signature_defs()

    def example_inputs(
        self, signature: Signature, method: str, examples: list[dict[str, Any]]
    ) -> dict[str | None, np.ndarray]:
        """Serialized ``tf.Example``s for a classify/regress signature's single string input."""
        expected = f"tensorflow/serving/{method}"
        if signature.method_name != expected:
            raise InvalidInput(
                f"signature '{signature.name}' of model '{self.name}' is a"
                f" {signature.method_name} signature, {method} needs {expected}"
            )
        serialized = [_to_example(self._tf, features).SerializeToString() for features in examples]
        return {None: np.array(serialized, dtype=object)}

    def infer(
        self, signature: str, inputs: dict[str, np.ndarray], parameters: dict[str, Any]
    ) -> dict[str, np.ndarray]:
        if self._keras_model is not None:
            return self._infer_keras(inputs)
        tf = self._tf
        feeds = {name: tf.convert_to_tensor(value) for name, value in inputs.items()}
        outputs = self._functions[signature](**feeds)
        return {name: tensor.numpy() for name, tensor in outputs.items()}

    def _infer_keras(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self._signatures[DEFAULT_SIGNATURE]
        feed: Any = inputs[next(iter(spec.inputs))] if len(spec.inputs) == 1 else inputs
        result = self._keras_model.predict_on_batch(feed)
        arrays = result if isinstance(result, (list, tuple)) else [result]
        if isinstance(result, dict):
            return {name: np.asarray(value) for name, value in result.items()}
        return {name: np.asarray(value) for name, value in zip(spec.outputs, arrays)}


class TensorFlowReplica(ModelDeployment):
    """The Serve deployment of a TensorFlow model."""

    servable_class = TensorFlowModel


TensorFlowDeployment = serve.deployment(TensorFlowReplica)


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
    return [t.name.split("/")[0] for t in model.outputs]


def _signature_defs_from_proto(pb_file: Path) -> dict[str, Any]:
    """The SavedModel's SignatureDefs in TF Serving's JSON form (defaults included)."""
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(pb_file.read_bytes())
    signature_defs = proto.meta_graphs[0].signature_def
    return {
        name: json_format.MessageToDict(
            signature_defs[name],
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
        for name in signature_defs
        if not name.startswith("__")  # internal entries such as __saved_model_init_op
    }
