"""What text models share, whatever runs them (transformers, ONNX Runtime): the checks of a
text input, the cut before tokenizing, and the signatures of the text tasks."""

from __future__ import annotations

from typing import Any

import numpy as np

from deployments.servable import DEFAULT_SIGNATURE
from deployments.signature import Signature, TensorSpec
from serve_app.errors import InvalidInput
from serve_app.text_tasks import EMBEDDINGS, TEXT, TOKEN_COUNT

STRING = np.dtype(object)
INT32 = np.dtype("int32")
FLOAT32 = np.dtype("float32")
# No token of these tokenizers spans more characters (WordPiece reads at most 100 per word),
# so a text cut at this many characters per token of context tokenizes as the whole text.
MAX_CHARS_PER_TOKEN = 100
TEXT_INPUT = {TEXT: TensorSpec(TEXT, STRING, (-1,))}


def embedding_signature(hidden_size: int) -> Signature:
    """``feature-extraction``: texts in, one L2-normalised embedding per text out (and the
    token counts the OpenAI route reports as usage)."""
    outputs = {
        EMBEDDINGS: TensorSpec(EMBEDDINGS, FLOAT32, (-1, hidden_size)),
        TOKEN_COUNT: TensorSpec(TOKEN_COUNT, INT32, (-1,)),
    }
    return Signature(DEFAULT_SIGNATURE, TEXT_INPUT, outputs)


def texts_of(column: np.ndarray) -> list[str]:
    """A string input's values as ``str`` (bytes decoded; checked before by ``check_texts``)."""
    return [t.decode() if isinstance(t, bytes) else t for t in column.tolist()]


def cut_texts(texts: list[str], max_tokens: int) -> list[str]:
    """Texts cut to what ``max_tokens`` of context can hold: the tokenizer reads a whole text
    before truncating it."""
    limit = max_tokens * MAX_CHARS_PER_TOKEN
    return [text[:limit] for text in texts]


def check_texts(column: np.ndarray, name: str) -> list[str]:
    """The texts of a string input, or 400 naming the first one that is not valid Unicode:
    bytes that are not UTF-8, or a string holding a lone surrogate (JSON ``"\\ud800"``)."""
    texts = []
    for row, value in enumerate(column.reshape(-1).tolist()):
        try:
            text = value.decode("utf-8") if isinstance(value, bytes) else value
            text.encode("utf-8")
        except UnicodeError as exc:
            kind = "UTF-8" if isinstance(value, bytes) else "Unicode (no lone surrogates)"
            raise InvalidInput(
                f"input '{name}'[{row}] is not valid {kind} text: {exc.reason} at position"
                f" {exc.start}"
            ) from None
        except AttributeError:
            raise InvalidInput(f"input '{name}'[{row}] is not text") from None
        texts.append(text)
    return texts


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Sentence embeddings: token states averaged over the attention mask, L2-normalised
    (sentence-transformers' mean pooling), in float32."""
    weights = mask[..., np.newaxis].astype(np.float32)
    pooled = (hidden.astype(np.float32) * weights).sum(axis=1) / np.maximum(
        weights.sum(axis=1), 1e-9
    )
    norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return pooled / norms


def context_length(config: dict[str, Any], tokenizer_config: dict[str, Any]) -> int:
    """The tokens a model takes: its position embeddings, or less if its tokenizer says so."""
    positions = config.get("max_position_embeddings") or config.get("n_positions") or 512
    declared = tokenizer_config.get("model_max_length")
    if isinstance(declared, int) and 0 < declared < positions:
        return declared
    return int(positions)
