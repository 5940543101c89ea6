"""The tensors of the text tasks, named once for the models that answer them
(``deployments/transformers.py``, ``deployments/onnx.py``) and the OpenAI routes that read
them (``serve_app/routes/openai.py``, ``serve_app/protocols/openai.py``).

Outputs whose names start with ``INTERNAL_PREFIX`` are for the OpenAI adapter (counts,
finish reasons): TF Serving and V2 answers leave them out unless asked for by name.
"""

from __future__ import annotations

from typing import Final

from serve_app.request import INTERNAL_PREFIX

# --- inputs ---------------------------------------------------------------------------------

TEXT: Final = "text"
# Text generation: each row's token budget, and the most one completion may ask for.
MAX_NEW_TOKENS: Final = "max_new_tokens"
MAX_NEW_TOKENS_LIMIT: Final = 1024

# --- text-generation outputs ----------------------------------------------------------------

GENERATED_TEXT: Final = "generated_text"  # the prompt and its completion, for TF Serving/V2
COMPLETION: Final = INTERNAL_PREFIX + "completion"
FINISH_REASON: Final = INTERNAL_PREFIX + "finish_reason"
PROMPT_TOKENS: Final = INTERNAL_PREFIX + "prompt_tokens"
COMPLETION_TOKENS: Final = INTERNAL_PREFIX + "completion_tokens"
# What an OpenAI completion reads of a generation.
COMPLETION_OUTPUTS: Final = (COMPLETION, FINISH_REASON, PROMPT_TOKENS, COMPLETION_TOKENS)

# --- a completion stream's items (``ModelReplica.generate_stream``) ------------------------

# ``{STREAM_TEXT: delta}`` while text is generated, then one item with the other three.
STREAM_TEXT: Final = "text"
STREAM_FINISH_REASON: Final = "finish_reason"
STREAM_PROMPT_TOKENS: Final = "prompt_tokens"
STREAM_COMPLETION_TOKENS: Final = "completion_tokens"

# --- feature-extraction outputs -------------------------------------------------------------

EMBEDDINGS: Final = "embeddings"
TOKEN_COUNT: Final = INTERNAL_PREFIX + "token_count"  # usage of an OpenAI embeddings answer
