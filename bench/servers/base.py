"""What a server in the comparison is: how to start it, what to send it, how to read the answer.

A ``Server`` only describes; ``bench.compare`` starts it (``bench.procs``), waits until a real
request answers correctly, loads it with ``bench.loadgen`` (HTTP, ``Endpoint``) and
``bench.grpc_load`` (gRPC, ``GrpcEndpoint``) and stops it.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.models import (
    DIGIT_ROW,
    INPUT_NAMES,
    OUTPUT_NAMES,
    OUTPUT_WIDTH,
    REPO_ROOT,
    SENTENCE,
    kind,
)

# Every batching server gets the same batching: up to 32 requests, waiting at most 5 ms for a
# batch to fill (the project's default, serve_config.yaml).
MAX_BATCH_SIZE = 32
BATCH_WAIT_S = 0.005
VENVS = REPO_ROOT / "bench" / ".venvs"

Extract = Callable[[Any], list[float]]
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"
GRPC_PREDICT = "/tensorflow.serving.PredictionService/Predict"
# The gRPC call of each kind of endpoint: V2 (Open Inference Protocol) or TF Serving.
GRPC_METHODS = {"v2": GRPC_INFER, "tfserving": GRPC_PREDICT}


@dataclass(frozen=True)
class Endpoint:
    """One way to call a server: a row of the results (``label``) with its exact request."""

    label: str
    protocol: str
    path: str
    body: dict[str, Any]
    extract: Extract  # the response JSON -> the single instance's output row

    def body_text(self) -> str:
        """The body as sent: compact JSON."""
        return json.dumps(self.body, separators=(",", ":"))


@dataclass(frozen=True)
class GrpcEndpoint:
    """A unary gRPC call with one instance, as the protocol's own Python client sends it: a
    row of the results (``label``) with its exact message. ``kind`` ``v2``: an Open Inference
    Protocol ``ModelInfer`` with raw tensors (``tritonclient.grpc``); ``tfserving``: a TF
    Serving ``Predict`` (``tf.make_tensor_proto``, the default signature)."""

    label: str
    protocol: str
    model: str
    inputs: dict[str, np.ndarray]  # input name -> the one-instance tensor
    output: str  # the output whose first row is compared with the reference
    kind: str = "v2"

    @property
    def method(self) -> str:
        """The gRPC method, ``/package.Service/Method``."""
        return GRPC_METHODS[self.kind]

    def body(self) -> bytes:
        """The serialized request (built by ``bench.grpc_load``)."""
        from bench.grpc_load import infer_request, predict_request

        if self.kind == "tfserving":
            return predict_request(self.model, self.inputs)
        return infer_request(self.model, self.inputs)

    def extract(self, raw: bytes) -> list[float]:
        """The output's first row from the serialized answer: a ``ModelInferResponse``
        (tritonclient's classes decode both typed and raw contents) or a
        ``PredictResponse`` (``tf.make_ndarray``)."""
        if self.kind == "tfserving":
            array = _predict_output(raw, self.output)
        else:
            array = _infer_output(raw, self.output)
        return [float(x) for x in np.asarray(array).reshape(-1)[: OUTPUT_WIDTH[self.model]]]

    def describe(self) -> dict[str, Any]:
        """The message as recorded in the results: model and each input's name, type, shape."""
        if self.kind == "tfserving":
            inputs = [
                {"name": name, "dtype": _tf_dtype(array.dtype), "shape": list(array.shape)}
                for name, array in self.inputs.items()
            ]
            contents = "tensor_content"  # make_tensor_proto's, for a numeric numpy array
            return {"model_spec": {"name": self.model}, "inputs": inputs, "contents": contents}
        from tritonclient.utils import np_to_triton_dtype

        inputs = [
            {"name": name, "datatype": np_to_triton_dtype(array.dtype), "shape": list(array.shape)}
            for name, array in self.inputs.items()
        ]
        return {"model_name": self.model, "inputs": inputs, "contents": "raw_input_contents"}


def _infer_output(raw: bytes, output: str) -> np.ndarray:
    import tritonclient.grpc as triton

    response = triton.service_pb2.ModelInferResponse.FromString(raw)
    array = triton.InferResult(response).as_numpy(output)
    if array is None:
        raise KeyError(f"no output {output!r} in {[o.name for o in response.outputs]}")
    return array


def _predict_output(raw: bytes, output: str) -> np.ndarray:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    response = predict_pb2.PredictResponse.FromString(raw)
    if output not in response.outputs:
        raise KeyError(f"no output {output!r} in {list(response.outputs)}")
    return tf.make_ndarray(response.outputs[output])


def _tf_dtype(dtype: np.dtype) -> str:
    """A numpy dtype's TensorFlow ``DataType`` name (``DT_FLOAT``), as the results record it."""
    import tensorflow as tf
    from tensorflow.core.framework import types_pb2

    return types_pb2.DataType.Name(tf.as_dtype(dtype).as_datatype_enum)


class Server:
    """A server under test. Subclasses fill in the class attributes and ``argv``."""

    name = ""
    models: tuple[str, ...] = ("digits", "minilm")  # the benchmark models it can serve
    port = 0
    grpc_port: int | None = None  # where it serves the Open Inference Protocol over gRPC
    venv: Path | None = None  # its own virtual environment (None: the project's .venv)
    packages: tuple[str, ...] = ()  # whose versions go into the results
    configured_as = ""  # one line for the report: processes, threads, batching
    batching = ""
    ready_timeout_s = 300.0  # a cold start on 2 busy cores can take minutes
    stop_grace_s = 30.0
    # SIGINT to the whole process group, as Ctrl+C in a terminal does, rather than only to the
    # process started (for servers whose workers must see the signal themselves).
    stop_group = False

    def python(self) -> Path:
        """The interpreter that runs this server."""
        return (self.venv or REPO_ROOT / ".venv") / "bin" / "python"

    def unavailable(self) -> str | None:
        """Why this server cannot run here, or None."""
        if not self.python().exists():
            return f"{self.python()} is missing: run `make bench-setup`"
        return None

    def argv(self, model: str, workdir: Path) -> list[str]:
        """The command line (may write config files into ``workdir``)."""
        raise NotImplementedError

    def env(self, model: str) -> dict[str, str]:
        """The environment: ours, the model, the repository on PYTHONPATH, offline hubs."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "RAY_"))}
        env.update(
            BENCH_MODEL=model,
            BENCH_PORT=str(self.port),
            PYTHONPATH=str(REPO_ROOT),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            TF_CPP_MIN_LOG_LEVEL="2",
            PYTHONUNBUFFERED="1",
        )
        return env

    def endpoints(self, model: str) -> list[Endpoint]:
        """The requests measured, the first one also used for the readiness check."""
        raise NotImplementedError

    def fully_started(self) -> bool:
        """Whether every worker of the server is up (one answer may come from the first)."""
        return True

    def grpc_endpoints(self, model: str) -> list[GrpcEndpoint]:
        """The gRPC calls measured (none unless the server says)."""
        return []

    def grpc_target(self) -> str:
        """The loopback ``host:port`` of its gRPC server."""
        return f"127.0.0.1:{self.grpc_port}"

    def settings(self, model: str) -> dict[str, Any]:
        """The configuration recorded in the results."""
        return {"configured_as": self.configured_as, "batching": self.batching}

    def url(self, endpoint: Endpoint) -> str:
        """The endpoint's full loopback URL."""
        return f"http://127.0.0.1:{self.port}{endpoint.path}"

    def ports(self) -> list[int]:
        """Every port the server listens on (all must be free before and after)."""
        return [self.port]

    def versions(self) -> dict[str, str]:
        """Python and package versions inside this server's environment."""
        code = (
            "import importlib.metadata as m, json, platform, sys\n"
            "out = {'python': platform.python_version(), 'executable': sys.executable}\n"
            f"for p in {list(self.packages)!r}:\n"
            "    try: out[p] = m.version(p)\n"
            "    except m.PackageNotFoundError: out[p] = None\n"
            "print(json.dumps(out))\n"
        )
        try:
            out = subprocess.run(
                [str(self.python()), "-c", code], capture_output=True, text=True, timeout=60
            )
            return json.loads(out.stdout)
        except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
            return {"error": str(exc)}


# --- request bodies and answers, by protocol --------------------------------------------------


def v2_body(model: str, text_shape: tuple[int, ...] = (1,)) -> dict[str, Any]:
    """An Open Inference Protocol (V2) JSON request with one instance, data flat."""
    if kind(model) == "digits":
        tensor = {"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": DIGIT_ROW}
    else:
        tensor = {
            "name": INPUT_NAMES[model],
            "shape": list(text_shape),
            "datatype": "BYTES",
            "data": [SENTENCE],
        }
    return {"inputs": [tensor]}


def v2_extract(model: str) -> Extract:
    """The named output's first row from a V2 JSON answer."""

    def extract(answer: Any) -> list[float]:
        for output in answer["outputs"]:
            if output["name"] == OUTPUT_NAMES[model]:
                return _flatten(output["data"])[: OUTPUT_WIDTH[model]]
        raise KeyError(f"no output {OUTPUT_NAMES[model]!r} in {list(answer)}")

    return extract


def v2_grpc_endpoint(label: str, model: str, text_shape: tuple[int, ...] = (1,)) -> GrpcEndpoint:
    """One instance as a V2 gRPC call: ``pixels`` FP32 ``[1, 64]``, or the sentence as BYTES
    of ``text_shape`` (Triton's batched ``(1,)`` input takes ``[1, 1]``)."""
    if kind(model) == "digits":
        tensor = np.asarray([DIGIT_ROW], dtype=np.float32)
    else:
        tensor = np.asarray([SENTENCE.encode()], dtype=object).reshape(text_shape)
    return GrpcEndpoint(label, "v2-grpc", model, {INPUT_NAMES[model]: tensor}, OUTPUT_NAMES[model])


def tfserving_grpc_endpoint(label: str, model: str) -> GrpcEndpoint:
    """One digits instance as a TF Serving gRPC ``Predict``: ``pixels`` float32 ``[1, 64]``.
    The answer's outputs are keyed by the model's output names (``encode_predict``), for the
    Keras digits model its output layer's: ``probabilities`` (``serve_app/examples.py``)."""
    if kind(model) != "digits":
        raise ValueError(f"no TF Serving Predict endpoint for {model}: digits only")
    tensor = np.asarray([DIGIT_ROW], dtype=np.float32)
    inputs = {INPUT_NAMES[model]: tensor}
    return GrpcEndpoint(label, "tfserving-grpc", model, inputs, OUTPUT_NAMES[model], "tfserving")


def instance(model: str) -> Any:
    """The one instance in a row-format body: 64 floats or the sentence."""
    return DIGIT_ROW if kind(model) == "digits" else SENTENCE


def key_extract(*keys: str | int) -> Extract:
    """Follow ``keys`` into the answer; the row found there."""

    def extract(answer: Any) -> list[float]:
        for key in keys:
            answer = answer[key]
        return _flatten(answer)

    return extract


def _flatten(value: Any) -> list[float]:
    if isinstance(value, list):
        return [x for item in value for x in _flatten(item)]
    return [float(value)]
