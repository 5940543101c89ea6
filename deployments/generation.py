"""Text generation settings and stop sequences, independent of any framework."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from serve_app.errors import InvalidInput

MAX_STOP_SEQUENCES = 4


class GenerationParameters(BaseModel):
    """Request-wide generation settings. ``temperature`` 0 means greedy decoding."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: Annotated[float, Field(ge=0, le=2)] = 0.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None
    stop: Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] = []
    # Each text is a JSON list of messages, rendered with the model's chat template.
    chat: bool = False

    @field_validator("stop", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("stop")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if any(not item for item in value):
            raise ValueError("stop sequences must not be empty")
        return value

    @property
    def sampling(self) -> bool:
        return self.temperature > 0


def parse_generation_parameters(parameters: dict[str, Any]) -> GenerationParameters:
    """Validate parameters, naming the bad one and what is allowed."""
    try:
        return GenerationParameters.model_validate(parameters)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"])
            if error["type"] == "extra_forbidden":
                allowed = ", ".join(GenerationParameters.model_fields)
                problems.append(f"unknown parameter '{where}' (allowed: {allowed})")
            else:
                problems.append(f"parameter '{where}': {error['msg']}")
        raise InvalidInput("; ".join(problems)) from None


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop sequence, and whether one was found."""
    cuts = [index for index in (text.find(s) for s in stop) if index >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


class StopScanner:
    """Streams text deltas, holding back just enough to never emit part of a stop sequence."""

    def __init__(self, stop: list[str]) -> None:
        self.stop = stop
        self.holdback = max((len(s) for s in stop), default=1) - 1
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Add generated text; return what can be sent now."""
        self.text += piece
        cut, found = cut_at_stop(self.text, self.stop)
        if found:
            self.stopped = True
            return self._emit_to(len(cut))
        return self._emit_to(max(self.emitted, len(self.text) - self.holdback))

    def finish(self) -> str:
        """Whatever is still held back once generation ends."""
        return "" if self.stopped else self._emit_to(len(self.text))

    def _emit_to(self, end: int) -> str:
        delta, self.emitted = self.text[self.emitted : end], max(self.emitted, end)
        return delta


def chat_messages(conversation: str) -> list[dict[str, str]]:
    """The messages of a chat request's text: a JSON list of ``{"role", "content"}``."""
    try:
        messages = json.loads(conversation)
    except ValueError:
        messages = None
    if (
        not isinstance(messages, list)
        or not messages
        or not all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in messages
        )
    ):
        raise InvalidInput(
            "with parameter chat, each text must be a JSON list of messages, each"
            ' {"role": string, "content": string}'
        )
    return messages


class Detokenizer:
    """Text of tokens decoded one step at a time, never splitting a character: a token that
    ends mid-character (byte-level BPE) waits for the next one."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # decoding restarts here, so context-dependent spacing stays right
        self._read = 0  # text up to here was returned

    def add(self, tokens: list[int]) -> str:
        """The new text that ``tokens`` complete ("" while a character is incomplete)."""
        self.ids.extend(tokens)
        return self._text(final=False)

    def finish(self) -> str:
        """Whatever text is still held back once generation ends."""
        return self._text(final=True)

    def _text(self, final: bool) -> str:
        decode = self._tokenizer.decode
        before = decode(self.ids[self._prefix : self._read], skip_special_tokens=True)
        whole = decode(self.ids[self._prefix :], skip_special_tokens=True)
        if (not final and whole.endswith("\ufffd")) or len(whole) <= len(before):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return whole[len(before) :]
