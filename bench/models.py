"""The benchmark's models, as plain framework code that every server in the comparison runs.

Every server (this service, Flask, MLServer, LitServe, KServe, PyTriton) and the in-process
limit load the same files from ``model_repository`` and compute the same outputs, the way
``deployments/`` does:

* ``digits``: the newest version's Keras ``model.keras``; input float32 ``(n, 64)`` (pixels
  divided by 16), output the softmax ``probabilities`` ``(n, 10)``, through
  ``predict_on_batch`` (as ``deployments/tensorflow.py``).
* ``minilm``: all-MiniLM-L6-v2 (``AutoModel`` + ``AutoTokenizer``, safetensors only); input
  one sentence per row, output the attention-mask mean-pooled, L2-normalised 384-d
  ``embeddings`` in float32 (as ``TransformersModel._embed`` in ``deployments/transformers.py``).
* ``minilm-onnx``: the same model exported to ONNX (``model_repository/minilm-onnx``), run by
  ONNX Runtime with the ``tokenizers`` tokenizer and the same pooling (as
  ``deployments/onnx.py``), with the intra-op threads the served model gets.
* ``digits-python``: the digits model wrapped as a Python model (``bench/python_digits.py``,
  a trivial ``preprocess``); in-process it is the digits model itself.

Each model is of a kind (``digits`` or ``minilm``): the kind fixes its requests and answers.

Only numpy is imported at module level: the peers' apps import this file in their own
virtual environments (PyTriton under Debian's Python), and the orchestrator imports it for
the sample requests without loading a framework.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

MODELS = ("digits", "minilm", "minilm-onnx", "digits-python")
# The kind of each model: which requests it takes and which answers it gives.
KINDS = {"digits": "digits", "minilm": "minilm", "minilm-onnx": "minilm", "digits-python": "digits"}
# The served ONNX model's threads in all: 2 replicas x 1 (OMP_NUM_THREADS in serve_config.yaml).
ONNX_THREADS = 2
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REPOSITORY = REPO_ROOT / "model_repository"

# The handwritten 7 of the README (pixel values 0..16 divided by 16): one digits instance.
DIGIT_ROW: list[float] = [
    *(0.0, 0.0, 0.125, 0.8125, 1.0, 0.5625, 0.0, 0.0),
    *(0.0, 0.0, 0.75, 0.75, 0.4375, 1.0, 0.1875, 0.0),
    *(0.0, 0.0625, 0.875, 0.1875, 0.0, 1.0, 0.25, 0.0),
    *(0.0, 0.0, 0.0, 0.25, 0.625, 1.0, 0.375, 0.0),
    *(0.0, 0.0, 0.0, 0.8125, 1.0, 1.0, 0.5625, 0.0),
    *(0.0, 0.0, 0.0, 0.3125, 0.8125, 0.0625, 0.0, 0.0),
    *(0.0, 0.0, 0.0, 0.6875, 0.5625, 0.0, 0.0, 0.0),
    *(0.0, 0.0, 0.0625, 1.0, 0.25, 0.0, 0.0, 0.0),
]
# One minilm instance: an ordinary sentence (13 tokens with [CLS] and [SEP]).
SENTENCE = "A load test sends this sentence to every server again and again."

_INPUT_NAMES = {"digits": "pixels", "minilm": "text"}
_OUTPUT_NAMES = {"digits": "probabilities", "minilm": "embeddings"}
_OUTPUT_WIDTH = {"digits": 10, "minilm": 384}
INPUT_NAMES = {model: _INPUT_NAMES[kind] for model, kind in KINDS.items()}
OUTPUT_NAMES = {model: _OUTPUT_NAMES[kind] for model, kind in KINDS.items()}
OUTPUT_WIDTH = {model: _OUTPUT_WIDTH[kind] for model, kind in KINDS.items()}


def kind(model: str) -> str:
    """``digits`` or ``minilm``: the requests a benchmark model takes."""
    return KINDS[model]


class BenchModel(Protocol):
    """A loaded benchmark model: a batch of instances in, one float32 row per instance out."""

    name: str

    def predict(self, batch: Any) -> np.ndarray:
        """``(n, 64)`` floats for digits, or a list of ``n`` sentences for minilm."""
        ...


def model_dir(name: str, repository: Path | None = None) -> Path:
    """The newest numbered version directory of ``name`` (digits has 1 and 2: 2 is served)."""
    root = Path(repository or os.environ.get("BENCH_MODEL_REPOSITORY") or DEFAULT_REPOSITORY)
    versions = [p for p in (root / name).iterdir() if p.is_dir() and p.name.isdigit()]
    if not versions:
        raise FileNotFoundError(f"no version of {name} under {root}: run `make models` first")
    return max(versions, key=lambda p: int(p.name))


class DigitsModel:
    """The Keras digits classifier, newest version."""

    name = "digits"

    def __init__(self, path: Path | None = None) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras

        self.path = path or model_dir("digits")
        self._model = keras.saving.load_model(
            self.path / "model.keras", safe_mode=True, compile=False
        )

    def predict(self, batch: Any) -> np.ndarray:
        """Softmax probabilities ``(n, 10)`` of ``(n, 64)`` pixel rows."""
        x = np.asarray(batch, dtype=np.float32).reshape(-1, 64)
        return np.asarray(self._model.predict_on_batch(x), dtype=np.float32)


class MiniLMModel:
    """all-MiniLM-L6-v2 sentence embeddings: mean-pooled over the attention mask, L2-normalised."""

    name = "minilm"

    def __init__(self, path: Path | None = None) -> None:
        import torch
        import transformers

        self.path = path or model_dir("minilm")
        self._torch = torch
        common = {"local_files_only": True, "trust_remote_code": False}
        self._tokenizer = transformers.AutoTokenizer.from_pretrained(self.path, **common)
        model = transformers.AutoModel.from_pretrained(self.path, use_safetensors=True, **common)
        self._model = model.eval()
        positions = self._model.config.max_position_embeddings
        self._max_length = min(positions, self._tokenizer.model_max_length or positions)

    def predict(self, batch: Any) -> np.ndarray:
        """Embeddings ``(n, 384)`` of ``n`` sentences (str or UTF-8 bytes)."""
        torch = self._torch
        texts = [t.decode() if isinstance(t, bytes) else str(t) for t in batch]
        with torch.inference_mode():
            encoded = self._tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=self._max_length,
                return_tensors="pt",
            )
            hidden = self._model(**encoded).last_hidden_state.float()
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()


class OnnxMiniLMModel:
    """all-MiniLM-L6-v2 as ONNX in an ONNX Runtime session: ``tokenizers``, mean pooling and
    L2 normalisation in numpy, ``ONNX_THREADS`` intra-op threads (as served)."""

    name = "minilm-onnx"

    def __init__(self, path: Path | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.path = path or model_dir("minilm-onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = ONNX_THREADS
        self._session = ort.InferenceSession(
            str(self.path / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self._tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        self._tokenizer.enable_truncation(512)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

    def predict(self, batch: Any) -> np.ndarray:
        """Embeddings ``(n, 384)`` of ``n`` sentences (str or UTF-8 bytes)."""
        texts = [t.decode() if isinstance(t, bytes) else str(t) for t in batch]
        encodings = self._tokenizer.encode_batch(texts)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": mask,
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        (hidden,) = self._session.run(None, feeds)
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return (pooled / norms).astype(np.float32)


def load(name: str, path: Path | None = None) -> BenchModel:
    """Load benchmark model ``name`` (one of ``MODELS``)."""
    if name in ("digits", "digits-python"):
        return DigitsModel(path)
    if name == "minilm":
        return MiniLMModel(path)
    if name == "minilm-onnx":
        return OnnxMiniLMModel(path)
    raise ValueError(f"unknown benchmark model {name!r}; choose from {', '.join(MODELS)}")


def sample_batch(name: str, rows: int) -> Any:
    """``rows`` copies of the benchmark's one instance, in the form ``predict`` takes."""
    if kind(name) == "digits":
        return np.tile(np.asarray(DIGIT_ROW, dtype=np.float32), (rows, 1))
    return [SENTENCE] * rows
