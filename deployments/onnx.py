"""ONNX models (``framework: onnx``) through ONNX Runtime: any ``.onnx`` file.

The version directory holds one ``*.onnx`` file (or ``onnx: {file: ...}`` names it). Its
graph's inputs and outputs are the signature; a free first dimension batches rows of many
requests into one ``session.run``. With ``task: feature-extraction`` and a tokenizer in the
version directory (``tokenizer.json``, as ``save_pretrained`` writes it), clients send text:
the replica tokenizes, runs the graph and mean-pools its first output into sentence
embeddings, as the transformers framework does. On a GPU it runs on ONNX Runtime's CUDA
provider (the ``onnxruntime-gpu`` build). onnxruntime is imported inside ``load``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from deployments.devices import (
    CUDA_VISIBLE_DEVICES,
    DeviceInfo,
    choose_device,
    configure_once,
    memory_limit_mib,
    no_gpu_message,
    total_gpu_memory_mib,
)
from deployments.servable import DEFAULT_SIGNATURE, Servable, StopCheck
from deployments.signature import Signature, TensorSpec
from deployments.text import (
    check_texts,
    context_length,
    cut_texts,
    embedding_signature,
    mean_pool,
    texts_of,
)
from serve_app.errors import ModelLoadError
from serve_app.request import EMBED, PREDICT
from serve_app.text_tasks import EMBEDDINGS, TEXT, TOKEN_COUNT

logger = logging.getLogger("ray.serve")

FEATURE_EXTRACTION = "feature-extraction"
TOKENIZER_FILE = "tokenizer.json"
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
# ONNX tensor element types -> numpy (strings as object arrays).
_ONNX_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "object",
}


class OnnxOptions(BaseModel):
    """``onnx:`` in a model's args."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The graph's file in each version directory; unset: the directory's one *.onnx file.
    file: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*\.onnx$")] | None = None
    # Threads of one session.run; unset: OMP_NUM_THREADS (the application's runtime_env)
    # if set, else ONNX Runtime's default (the machine's cores).
    intra_op_threads: Annotated[int, Field(ge=1, le=256)] | None = None
    inter_op_threads: Annotated[int, Field(ge=1, le=256)] | None = None
    # ONNX Runtime's compute threads spin while they wait for work: faster on cores of their
    # own, but on cores shared with the ingress and other replicas they take the CPU those
    # need (bench/NOTES.md, "ONNX Runtime"). Off unless asked for.
    allow_spinning: bool = False


class OnnxModel(Servable):
    """An ONNX graph in an ONNX Runtime session (a text model with its tokenizer)."""

    platform = "onnxruntime_onnx"  # Triton's name for it
    tasks = (FEATURE_EXTRACTION,)
    options_model = OnnxOptions

    @classmethod
    def capabilities(cls, task: str | None, options: dict[str, Any]) -> frozenset[str]:
        return frozenset({PREDICT, EMBED} if task == FEATURE_EXTRACTION else {PREDICT})

    def load(self, path: Path) -> None:
        import onnxruntime as ort

        options = self.parse_options(self.spec.options)
        providers, self.device_info = setup_onnxruntime(self.name, self.spec)
        session_options = ort.SessionOptions()
        threads = options.intra_op_threads or _env_threads()
        if threads:
            session_options.intra_op_num_threads = threads
        if options.inter_op_threads:
            session_options.inter_op_num_threads = options.inter_op_threads
        spin = "1" if options.allow_spinning else "0"
        session_options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        session_options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        file = onnx_file(self.name, self.spec.uri, path, options.file)
        try:
            self._session = ort.InferenceSession(str(file), session_options, providers=providers)
        except Exception as exc:  # ONNX Runtime's own errors: a bad or unsupported graph
            raise ModelLoadError(
                f"model '{self.name}': ONNX Runtime cannot load {file.name}:"
                f" {type(exc).__name__}: {exc}"
            ) from None
        self._graph = Signature(
            DEFAULT_SIGNATURE,
            {i.name: _tensor_spec(i) for i in self._session.get_inputs()},
            {o.name: _tensor_spec(o) for o in self._session.get_outputs()},
            batched=all(_free_first(spec) for spec in self._tensor_specs()),
        )
        self._tokenizer: Any = None
        if self.spec.task == FEATURE_EXTRACTION:
            self._load_tokenizer(path)

    def _tensor_specs(self) -> list[TensorSpec]:
        return [*map(_tensor_spec, self._session.get_inputs()), *self._output_specs()]

    def _output_specs(self) -> list[TensorSpec]:
        return [_tensor_spec(o) for o in self._session.get_outputs()]

    def _load_tokenizer(self, path: Path) -> None:
        """The text model's tokenizer (``tokenizers``, no transformers or torch), padded and
        truncated as ``save_pretrained`` configured it."""
        from tokenizers import Tokenizer

        if not (path / TOKENIZER_FILE).is_file():
            raise ModelLoadError(
                f"model '{self.name}': task {FEATURE_EXTRACTION} needs {TOKENIZER_FILE} beside"
                f" the graph in version directory '{path.name}' of {self.spec.uri}"
            )
        config = _json(path / "config.json")
        tokenizer_config = _json(path / "tokenizer_config.json")
        self._max_length = context_length(config, tokenizer_config)
        tokenizer = Tokenizer.from_file(str(path / TOKENIZER_FILE))
        tokenizer.enable_truncation(self._max_length)
        pad = tokenizer_config.get("pad_token") or "[PAD]"
        pad = pad.get("content", "[PAD]") if isinstance(pad, dict) else str(pad)
        pad_id = tokenizer.token_to_id(pad)
        tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token=pad)
        self._tokenizer = tokenizer
        self._feeds = [i.name for i in self._session.get_inputs()]
        hidden = self._output_specs()[0].shape
        if hidden is None or len(hidden) != 3 or hidden[-1] < 1:
            raise ModelLoadError(
                f"model '{self.name}': task {FEATURE_EXTRACTION} needs a first output of"
                f" shape [batch, tokens, hidden], the graph's is {hidden}"
            )
        self._text_signature = embedding_signature(hidden[-1])
        # Read once here, not per batch: the graph's output of token states.
        self._hidden_output = self._output_specs()[0].name

    def signatures(self) -> dict[str, Signature]:
        if self._tokenizer is not None:
            return {DEFAULT_SIGNATURE: self._text_signature}
        return {DEFAULT_SIGNATURE: self._graph}

    def check_request(self, inputs: dict[str, np.ndarray], parameters: dict[str, Any]) -> None:
        if self._tokenizer is not None:
            check_texts(inputs[TEXT], TEXT)
        super().check_request(inputs, parameters)

    def infer(
        self,
        signature: str,
        inputs: dict[str, np.ndarray],
        parameters: dict[str, Any],
        stop: StopCheck | None = None,
    ) -> dict[str, np.ndarray]:
        if self._tokenizer is not None:
            return self._embed(texts_of(inputs[TEXT]))
        names = list(self._graph.outputs)
        return dict(zip(names, self._session.run(names, inputs)))

    def _embed(self, texts: list[str]) -> dict[str, np.ndarray]:
        encodings = self._tokenizer.encode_batch(cut_texts(texts, self._max_length))
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        columns = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": mask,
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        feeds = {name: columns[name] for name in self._feeds if name in columns}
        (hidden,) = self._session.run([self._hidden_output], feeds)
        return {
            EMBEDDINGS: mean_pool(hidden, mask),
            TOKEN_COUNT: mask.sum(axis=1).astype(np.int32),
        }

    def warmup_inputs(self, signature: Signature) -> dict[str | None, np.ndarray] | None:
        if any(d is None for d in (s.shape for s in signature.inputs.values())):
            return None
        return super().warmup_inputs(signature)


def setup_onnxruntime(model: str, spec: Any) -> tuple[list[Any], DeviceInfo]:
    """ONNX Runtime's execution providers for this replica: CUDA (its memory capped at the
    replica's share of the GPU) when it asked for a GPU and the build has CUDA, else CPU."""
    return configure_once("onnxruntime", lambda: _providers(model, spec.resources))


def _providers(model: str, resources: Any) -> tuple[list[Any], DeviceInfo]:
    import onnxruntime as ort

    if resources.num_gpus <= 0:
        return [CPU], DeviceInfo("cpu", "onnxruntime")
    available = ort.get_available_providers()
    count = 1 if CUDA in available else 0
    reason = f"onnxruntime {ort.__version__} has no {CUDA} (install onnxruntime-gpu)"
    cuda_visible = os.environ.get(CUDA_VISIBLE_DEVICES)
    if choose_device(model, resources, "onnxruntime", count, reason, cuda_visible) is None:
        fallback = no_gpu_message(model, resources, "onnxruntime", reason, cuda_visible)
        logger.warning("%s; allow_cpu_fallback is set, so it runs on the CPU", fallback)
        return [CPU], DeviceInfo("cpu", "onnxruntime", fallback_reason=reason)
    limit = memory_limit_mib(resources.num_gpus, total_gpu_memory_mib())
    cuda_options: dict[str, Any] = {"device_id": 0}
    if limit is not None:
        cuda_options["gpu_mem_limit"] = limit * 2**20
    info = DeviceInfo(
        "cuda:0",
        "onnxruntime",
        memory_policy="limit" if limit is not None else "none",
        memory_limit_mib=limit,
    )
    return [(CUDA, cuda_options), CPU], info


def onnx_file(model: str, uri: str, path: Path, named: str | None) -> Path:
    """The graph of a version directory: the named file, or its one ``*.onnx`` file."""
    if named is not None:
        if not (path / named).is_file():
            raise ModelLoadError(
                f"model '{model}': no {named} (onnx.file) in version directory '{path.name}'"
                f" of {uri}"
            )
        return path / named
    found = sorted(p for p in path.iterdir() if p.suffix == ".onnx" and p.is_file())
    if len(found) == 1:
        return found[0]
    held = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
    if not found:
        raise ModelLoadError(
            f"model '{model}': no *.onnx file in version directory '{path.name}' of {uri}"
            f" (it holds: {held})"
        )
    raise ModelLoadError(
        f"model '{model}': version directory '{path.name}' of {uri} holds"
        f" {', '.join(p.name for p in found)}; name one with onnx: {{file: ...}}"
    )


def _tensor_spec(node: Any) -> TensorSpec:
    """An ONNX Runtime input/output: numpy dtype, and -1 for each symbolic dimension."""
    dtype = _ONNX_TYPES.get(node.type)
    if dtype is None:
        raise ModelLoadError(f"tensor '{node.name}' has type {node.type}, which is not served")
    shape = (
        None if node.shape is None else tuple(d if isinstance(d, int) else -1 for d in node.shape)
    )
    return TensorSpec(node.name, np.dtype(dtype), shape)


def _free_first(spec: TensorSpec) -> bool:
    """Whether a tensor's first dimension is free (rows of many requests may be stacked)."""
    return spec.shape is not None and len(spec.shape) > 0 and spec.shape[0] == -1


def _env_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if re.fullmatch(r"[1-9][0-9]{0,2}", value) else None


def _json(file: Path) -> dict[str, Any]:
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{file.name} is not valid JSON: {exc}") from None
    return data if isinstance(data, dict) else {}
