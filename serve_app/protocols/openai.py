"""OpenAI-compatible bodies: completions and chat completions (plain and streamed), and
embeddings."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from serve_app.errors import InvalidInput, ServingError
from serve_app.text_tasks import COMPLETION, COMPLETION_TOKENS, FINISH_REASON, PROMPT_TOKENS

MAX_N = 8
MAX_PROMPTS = 64
MAX_MESSAGES = 256
DEFAULT_MAX_TOKENS = 16  # OpenAI's default


class _Request(BaseModel):
    # Unknown fields are refused, so an unsupported option is never silently ignored.
    model_config = ConfigDict(extra="forbid")

    model: str
    user: str | None = None


class CompletionRequest(_Request):
    """``POST /v1/completions``."""

    prompt: str | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]
    max_tokens: Annotated[int, Field(ge=1)] = DEFAULT_MAX_TOKENS
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    # Accepted at their neutral values only.
    frequency_penalty: Literal[0, 0.0] | None = None
    presence_penalty: Literal[0, 0.0] | None = None
    echo: Literal[False] | None = None
    logprobs: None = None
    best_of: Literal[1] | None = None

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, str) and not value:
            raise ValueError("prompt must not be empty")
        return value

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def generation_parameters(self) -> dict[str, Any]:
        """Parameters for the model's text-generation signature."""
        parameters: dict[str, Any] = {"temperature": self.temperature, "top_p": self.top_p}
        if self.stop:
            parameters["stop"] = [self.stop] if isinstance(self.stop, str) else self.stop
        if self.seed is not None:
            parameters["seed"] = self.seed
        return parameters


class TextPart(BaseModel):
    """One part of a message's content; only text is supported."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message of a conversation, as the chat template takes it."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | Annotated[list[TextPart], Field(min_length=1)]
    name: str | None = None

    def as_template_input(self) -> dict[str, str]:
        """``{"role", "content"}`` with the content as one string."""
        if isinstance(self.content, str):
            return {"role": self.role, "content": self.content}
        return {"role": self.role, "content": "".join(part.text for part in self.content)}


class ChatCompletionRequest(_Request):
    """``POST /v1/chat/completions``. Fields that are not declared (``tools``,
    ``response_format``, ``logit_bias``, ...) are refused by name."""

    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    # Accepted at their neutral values only: anything else would be silently ignored.
    n: Literal[1] | None = None
    frequency_penalty: Literal[0, 0.0] | None = None
    presence_penalty: Literal[0, 0.0] | None = None
    logprobs: Literal[False] | None = None

    @property
    def token_budget(self) -> int:
        """``max_completion_tokens`` (the current name), else ``max_tokens``, else 16."""
        return self.max_completion_tokens or self.max_tokens or DEFAULT_MAX_TOKENS

    def conversation(self) -> str:
        """The messages as the JSON text the model's chat template renders."""
        return json.dumps([m.as_template_input() for m in self.messages], ensure_ascii=False)

    def generation_parameters(self) -> dict[str, Any]:
        """Parameters for the model's text-generation signature, with ``chat`` on."""
        parameters: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "chat": True,
        }
        if self.stop:
            parameters["stop"] = [self.stop] if isinstance(self.stop, str) else self.stop
        if self.seed is not None:
            parameters["seed"] = self.seed
        return parameters


class EmbeddingRequest(_Request):
    """``POST /v1/embeddings``."""

    input: str | Annotated[list[str], Field(min_length=1, max_length=2048)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: None = None

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


# Options accepted only at the value that changes nothing, and what that value is.
NEUTRAL_ONLY = {
    "n": "1",
    "frequency_penalty": "0",
    "presence_penalty": "0",
    "logprobs": "false",
    "echo": "false",
    "best_of": "1",
}


def parse(model: type[_Request], body: Any) -> Any:
    """Validate a body; errors name the field and what is expected."""
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "body"
            if error["type"] == "extra_forbidden":
                problems.append(f"'{where}' is not supported")
            elif error["type"] == "literal_error" and error["loc"][-1] in NEUTRAL_ONLY:
                allowed = NEUTRAL_ONLY[error["loc"][-1]]
                problems.append(f"'{where}' is not supported (only {allowed} is accepted)")
            else:
                problems.append(f"'{where}': {error['msg']}")
        raise InvalidInput("; ".join(problems)) from None


def error_body(error: ServingError) -> dict[str, Any]:
    """OpenAI's error shape, which the ``openai`` client turns into its exceptions."""
    kinds = {
        400: "invalid_request_error",
        404: "invalid_request_error",
        413: "invalid_request_error",
    }
    code = "model_not_found" if error.status_code == 404 else None
    return {
        "error": {
            "message": error.message,
            "type": kinds.get(error.status_code, "server_error"),
            "param": None,
            "code": code,
        }
    }


def models_list(names: list[str], created: int) -> dict[str, Any]:
    """``GET /v1/models``."""
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "serve-app"}
            for name in names
        ],
    }


def usage_counts(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's ``usage`` of a completion or chat completion."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_response(
    model: str, outputs: dict[str, np.ndarray], n: int, include_usage: bool = True
) -> dict[str, Any]:
    """A completion from the model's rows: prompt-major, ``n`` rows per prompt."""
    texts = outputs[COMPLETION].tolist()
    reasons = outputs[FINISH_REASON].tolist()
    prompt_tokens = outputs[PROMPT_TOKENS].tolist()
    completion_tokens = outputs[COMPLETION_TOKENS].tolist()
    choices = [
        {"index": i, "text": texts[i], "logprobs": None, "finish_reason": reasons[i]}
        for i in range(len(texts))
    ]
    body = {
        "id": _completion_id(),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if include_usage:
        prompts = sum(prompt_tokens[::n])  # each prompt counted once, not once per choice
        body["usage"] = usage_counts(prompts, sum(completion_tokens))
    return body


class CompletionStream:
    """Server-sent events of one streamed completion, ending with ``data: [DONE]``."""

    object_name = "text_completion"

    def __init__(self, model: str, include_usage: bool) -> None:
        self.model = model
        self.include_usage = include_usage
        self.id = _completion_id()
        self.created = int(time.time())

    def chunk(self, text: str, finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return self._event({**self._head(), "choices": [choice]})

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        usage = usage_counts(prompt_tokens, completion_tokens)
        return self._event({**self._head(), "choices": [], "usage": usage})

    @staticmethod
    def error(error: ServingError) -> bytes:
        return CompletionStream._event(error_body(error))

    @staticmethod
    def done() -> bytes:
        return b"data: [DONE]\n\n"

    def _head(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.object_name,
            "created": self.created,
            "model": self.model,
        }

    @staticmethod
    def _event(document: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(document, separators=(",", ":")).encode() + b"\n\n"


def embedding_response(
    model: str, embeddings: np.ndarray, token_counts: np.ndarray, encoding_format: str
) -> dict[str, Any]:
    """``POST /v1/embeddings`` answer; base64 is little-endian float32, as OpenAI sends it."""
    data = []
    for index, vector in enumerate(embeddings):
        if encoding_format == "base64":
            value: Any = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
        else:
            value = vector.astype(float).tolist()
        data.append({"object": "embedding", "index": index, "embedding": value})
    tokens = int(token_counts.sum())
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def chat_response(model: str, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """A chat completion from the model's one row."""
    prompt_tokens = int(outputs[PROMPT_TOKENS][0])
    completion_tokens = int(outputs[COMPLETION_TOKENS][0])
    message = {"role": "assistant", "content": str(outputs[COMPLETION][0])}
    return {
        "id": _chat_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": str(outputs[FINISH_REASON][0]),
            }
        ],
        "usage": usage_counts(prompt_tokens, completion_tokens),
    }


class ChatStream(CompletionStream):
    """Server-sent ``chat.completion.chunk`` events: the assistant's role first, then content
    deltas, the finish reason (an empty delta), optional usage, and ``data: [DONE]``."""

    object_name = "chat.completion.chunk"

    def __init__(self, model: str, include_usage: bool) -> None:
        super().__init__(model, include_usage)
        self.id = _chat_id()
        self.started = False

    def chunk(self, text: str, finish_reason: str | None = None) -> bytes:
        events = b""
        if not self.started:  # OpenAI's first chunk carries the role alone
            self.started = True
            events = self._choice({"role": "assistant", "content": ""}, None)
        delta = {"content": text} if finish_reason is None else {}
        return events + self._choice(delta, finish_reason)

    def _choice(self, delta: dict[str, str], finish_reason: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self._event({**self._head(), "choices": [choice]})


def _chat_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def _completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"
