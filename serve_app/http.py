"""HTTP pieces every REST route shares: request bodies, JSON, replies and error bodies.

Pure ASGI and no web framework, so the hot routes (``serve_app/asgi.py``) and the FastAPI
routes (``serve_app/fastapi_app.py``) write byte-identical responses.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from serve_app.errors import InvalidInput, PayloadTooLarge, ServingError, tfserving_error_body
from serve_app.protocols import openai

OPENAI_PATHS = ("/v1/completions", "/v1/embeddings", "/v1/models")
JSON = "application/json"


def json_bytes(content: Any) -> bytes:
    """JSON that writes NaN and Infinity as TF Serving does, instead of failing.

    orjson writes a response much faster than ``json``: an OpenAI embedding response (384
    floats) takes 10 µs instead of 270 µs. But it writes NaN and Infinity as ``null``. So
    a body with no ``null`` in it had none of them and is sent as is; one with a ``null``
    is written again by ``json``, which keeps NaN and Infinity as TF Serving writes them.
    """
    try:
        fast = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:  # e.g. an integer past 64 bits: json writes it
        fast = b"null"
    if b"null" not in fast:
        return fast
    return json.dumps(content, allow_nan=True, separators=(",", ":")).encode("utf-8")


def parse_json(body: bytes) -> Any:
    """A request body as JSON; NaN and Infinity allowed, as TF Serving does.

    orjson parses the common body; what it refuses (NaN, integers past 64 bits, other
    encodings, malformed JSON) is parsed again by ``json``, whose errors name the position.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except ValueError as exc:  # malformed, not UTF-8/16/32, an integer of thousands of digits
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput("request body is not valid JSON: nested too deeply") from None


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


async def read_body(receive: Any, declared: str | None, limit: int) -> bytes:
    """The whole request body from ASGI ``receive``, refused with 413 past ``limit`` bytes."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"request body of {declared} bytes exceeds the limit of {limit} bytes"
        )
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise InvalidInput("the client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
