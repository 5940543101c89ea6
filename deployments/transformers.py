"""Hugging Face transformers models from ``save_pretrained`` directories, by task.

Weights load only from safetensors and never with ``trust_remote_code``: an artifact cannot
run code. torch and transformers are imported inside ``load``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from deployments.base import DEFAULT_SIGNATURE, ModelDeployment
from deployments.signature import Signature, TensorSpec
from serve_app.errors import InvalidInput

STRING = np.dtype(object)
DEFAULT_MAX_NEW_TOKENS = 32
MAX_NEW_TOKENS_LIMIT = 1024


class TransformersModel(ModelDeployment):
    """``feature-extraction`` (mean-pooled, L2-normalised sentence embeddings),
    ``text-classification`` (label and score) and ``text-generation`` (greedy)."""

    def load(self, path: Path) -> None:
        import torch
        import transformers

        self._torch = torch
        common = {"local_files_only": True, "trust_remote_code": False}
        self._tokenizer = transformers.AutoTokenizer.from_pretrained(path, **common)
        model_class = {
            "feature-extraction": transformers.AutoModel,
            "text-classification": transformers.AutoModelForSequenceClassification,
            "text-generation": transformers.AutoModelForCausalLM,
        }[self.spec.task]
        self._model = model_class.from_pretrained(path, use_safetensors=True, **common).eval()
        config = self._model.config
        positions = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", 512
        )
        self._max_length = min(positions, self._tokenizer.model_max_length or positions)
        if self.spec.task == "text-generation":
            # Batched generation pads on the left so every row continues from its last token.
            self._tokenizer.padding_side = "left"
            if self._tokenizer.pad_token is None:
                self._tokenizer.pad_token = self._tokenizer.eos_token
        self._signatures = {DEFAULT_SIGNATURE: self._task_signature(config)}

    def _task_signature(self, config: Any) -> Signature:
        text = {"text": TensorSpec("text", STRING, (-1,))}
        if self.spec.task == "feature-extraction":
            size = config.hidden_size
            outputs = {"embeddings": TensorSpec("embeddings", np.dtype("float32"), (-1, size))}
            return Signature(DEFAULT_SIGNATURE, text, outputs)
        if self.spec.task == "text-classification":
            outputs = {
                "label": TensorSpec("label", STRING, (-1,)),
                "score": TensorSpec("score", np.dtype("float32"), (-1,)),
            }
            return Signature(DEFAULT_SIGNATURE, text, outputs)
        inputs = {
            **text,
            "max_new_tokens": TensorSpec(
                "max_new_tokens", np.dtype("int32"), (-1,), default=DEFAULT_MAX_NEW_TOKENS
            ),
        }
        outputs = {"generated_text": TensorSpec("generated_text", STRING, (-1,))}
        return Signature(DEFAULT_SIGNATURE, inputs, outputs)

    def signatures(self) -> dict[str, Signature]:
        return self._signatures

    def infer(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [t.decode() if isinstance(t, bytes) else t for t in inputs["text"].tolist()]
        with self._torch.inference_mode():
            if self.spec.task == "feature-extraction":
                return {"embeddings": self._embed(texts)}
            if self.spec.task == "text-classification":
                return self._classify(texts)
            return {"generated_text": self._generate(texts, inputs["max_new_tokens"])}

    def _encode(self, texts: list[str]) -> Any:
        return self._tokenizer(
            texts, padding=True, truncation=True, max_length=self._max_length, return_tensors="pt"
        )

    def _embed(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        encoded = self._encode(texts)
        hidden = self._model(**encoded).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1).float().numpy()

    def _classify(self, texts: list[str]) -> dict[str, np.ndarray]:
        logits = self._model(**self._encode(texts)).logits
        probabilities = logits.softmax(dim=-1)
        scores, indices = probabilities.max(dim=-1)
        labels = self._model.config.id2label
        return {
            "label": np.array([labels[int(i)] for i in indices], dtype=object),
            "score": scores.float().numpy(),
        }

    def check_request(self, inputs: dict[str, np.ndarray]) -> None:
        if self.spec.task != "text-generation":
            return
        budgets = inputs["max_new_tokens"]
        if budgets.min() < 1 or budgets.max() > MAX_NEW_TOKENS_LIMIT:
            raise InvalidInput(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS_LIMIT}")
        texts = [t.decode() if isinstance(t, bytes) else t for t in inputs["text"].tolist()]
        lengths = [len(ids) for ids in self._tokenizer(texts)["input_ids"]]
        for row, (length, budget) in enumerate(zip(lengths, budgets.tolist())):
            if length + budget > self._max_length:
                raise InvalidInput(
                    f"text[{row}] ({length} tokens) plus max_new_tokens ({budget}) exceeds"
                    f" the model's context of {self._max_length} tokens"
                )

    def _generate(self, texts: list[str], max_new_tokens: np.ndarray) -> np.ndarray:
        result = np.empty(len(texts), dtype=object)
        # One generate call per distinct max_new_tokens: rows in a call share that setting.
        for budget in np.unique(max_new_tokens):
            rows = np.flatnonzero(max_new_tokens == budget)
            result[rows] = self._generate_rows([texts[i] for i in rows], int(budget))
        return result

    def _generate_rows(self, texts: list[str], max_new_tokens: int) -> list[str]:
        encoded = self._encode(texts)
        prompt_tokens = encoded["input_ids"].shape[1]
        generated = self._model.generate(
            **encoded,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self._tokenizer.pad_token_id,
        )
        completions = self._tokenizer.batch_decode(
            generated[:, prompt_tokens:], skip_special_tokens=True
        )
        return [prompt + completion for prompt, completion in zip(texts, completions)]


TransformersDeployment = serve.deployment(TransformersModel)
