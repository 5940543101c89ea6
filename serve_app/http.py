"""HTTP pieces every REST route shares: request bodies, JSON, replies and error bodies.

Pure ASGI and no web framework, so the hot routes (``serve_app/asgi.py``) and the FastAPI
routes (``serve_app/fastapi_app.py``) write byte-identical responses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from serve_app.config import IngressSpec
from serve_app.errors import (
    DeadlineExceeded,
    InvalidInput,
    PayloadTooLarge,
    RequestTimeout,
    ServingError,
    tfserving_error_body,
)
from serve_app.jsonio import json_bytes
from serve_app.limits import BodyBudget
from serve_app.protocols import openai

OPENAI_PATHS = ("/v1/completions", "/v1/embeddings", "/v1/models")
JSON = "application/json"
# A Content-Length of more digits is over any limit (and int() of 5,000 digits fails).
MAX_LENGTH_DIGITS = 18
BODY_IDLE_TIMEOUT_S: float = IngressSpec.model_fields["body_idle_timeout_s"].default


@dataclass
class Reply:
    """A complete HTTP response."""

    body: bytes
    status: int = 200
    media_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)

    async def send(self, send: Any) -> None:
        """Send it over ASGI."""
        headers = [
            (b"content-type", self.media_type.encode("latin-1")),
            (b"content-length", str(len(self.body)).encode("latin-1")),
        ]
        headers += [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


@dataclass
class StreamReply:
    """A streamed HTTP response (server-sent events)."""

    chunks: AsyncIterator[bytes]
    media_type: str = "text/event-stream"


def json_reply(content: Any, status: int = 200) -> Reply:
    return Reply(json_bytes(content), status)


def error_reply(path: str, error: ServingError) -> Reply:
    """The error in the body shape of the protocol the request spoke, with its headers."""
    if path.rstrip("/").endswith(OPENAI_PATHS):
        body = openai.error_body(error)
    else:
        body = tfserving_error_body(error)
    return Reply(json_bytes(body), error.status_code, headers=dict(error.headers or {}))


async def read_body(
    receive: Any,
    declared: str | None,
    limit: int,
    budget: BodyBudget,
    idle_timeout_s: float = BODY_IDLE_TIMEOUT_S,
    deadline: float | None = None,
) -> bytes:
    """The whole request body from ASGI ``receive``: 413 past ``limit`` bytes, 503 past the
    ingress's ``budget``, 408 when no byte arrives for ``idle_timeout_s``, 504 when the body is
    still arriving at ``deadline`` (``time.monotonic()``). The caller gives the body's size
    back to the budget when done; on an error it is given back here."""
    if declared is not None and not (declared.isascii() and declared.isdigit()):
        raise InvalidInput(f"header Content-Length must be a byte count, got '{declared[:32]}'")
    if declared is not None and (len(declared) > MAX_LENGTH_DIGITS or int(declared) > limit):
        raise PayloadTooLarge(
            f"request body of {_brief(declared)} bytes exceeds the limit of {limit} bytes"
        )
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            message = await _next_message(receive, size, declared, idle_timeout_s, deadline)
            if message["type"] != "http.request":
                raise InvalidInput("the client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            if size + len(chunk) > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            budget.take(len(chunk))
            size += len(chunk)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except BaseException:
        budget.give(size)
        raise


async def _next_message(
    receive: Any, size: int, declared: str | None, idle_s: float, deadline: float | None
) -> dict:
    """One ASGI message, within the idle timeout and the request's deadline. Nothing else
    bounds it: the ASGI server waits for the rest of a body as long as the connection lives."""
    now = time.monotonic()
    by_deadline = deadline is not None and deadline - now < idle_s
    # asyncio.timeout, not wait_for: no task per message on the hot path (the loop's clock
    # is time.monotonic, the deadline's).
    try:
        async with asyncio.timeout_at(deadline if by_deadline else now + idle_s):
            return await receive()
    except TimeoutError:
        of = f" of {_brief(declared)}" if declared is not None else ""
        if by_deadline:
            raise DeadlineExceeded(
                f"the request body was still arriving at the request's deadline ({size}{of}"
                " bytes received; X-Request-Timeout-Seconds or ingress.request_timeout_s)"
            ) from None
        raise RequestTimeout(
            f"the request body stopped arriving: no bytes for {idle_s:g} s after {size}{of}"
            " bytes (ingress.body_idle_timeout_s); send the whole body without pausing"
        ) from None


def _brief(text: str) -> str:
    return text if len(text) <= 32 else text[:32] + "..."
