"""TF Serving's signature conventions, shared by TensorFlow models
(``deployments/tensorflow.py``) and their warm-up (``deployments/tf_warmup.py``): the
method names, and the serialized ``tf.Example`` input of classify and regress signatures.
"""

from __future__ import annotations

import numpy as np

from deployments.signature import Signature
from serve_app.errors import InvalidInput

# A SignatureDef's method_name (signature_constants.h).
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
# TF Serving's names for classify/regress signatures' tensors (signature_constants.h).
EXAMPLES_INPUT, CLASSES_OUTPUT, SCORES_OUTPUT, REGRESS_OUTPUT = (
    "inputs",
    "classes",
    "scores",
    "outputs",
)


def check_example_signature(model: str, signature: Signature, method: str) -> None:
    """TF Serving's checks of a signature used to classify or regress (its method name is not
    checked, as TF Serving's default ``--enable_signature_method_name_check=false``)."""
    where = f"signature '{signature.name}' of model '{model}' cannot {method}"
    if list(signature.inputs) != [EXAMPLES_INPUT]:
        raise InvalidInput(
            f"{where}: {method} needs exactly one input named '{EXAMPLES_INPUT}' (serialized"
            f" tf.Examples), the signature has [{', '.join(signature.inputs)}]"
        )
    outputs = list(signature.public_outputs())
    if method == "classify":
        if not {CLASSES_OUTPUT, SCORES_OUTPUT} & set(outputs) or len(outputs) > 2:
            raise InvalidInput(
                f"{where}: classify needs one or two outputs, '{CLASSES_OUTPUT}' and/or"
                f" '{SCORES_OUTPUT}', the signature has [{', '.join(outputs)}]"
            )
    elif outputs != [REGRESS_OUTPUT]:
        raise InvalidInput(
            f"{where}: regress needs exactly one output named '{REGRESS_OUTPUT}',"
            f" the signature has [{', '.join(outputs)}]"
        )


def serialized_examples(serialized: list[bytes]) -> dict[str | None, np.ndarray]:
    """The one input of a classify/regress call: a vector of serialized ``tf.Example``s."""
    if not serialized:
        raise InvalidInput("Input is empty: classify and regress need at least one example")
    array = np.empty((len(serialized),), dtype=object)
    array[:] = serialized
    return {EXAMPLES_INPUT: array}
