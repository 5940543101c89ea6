"""HTTP pieces every REST route shares: request bodies, JSON, replies and error bodies.

Pure ASGI and no web framework: the REST entry (``serve_app/asgi.py``) writes every route's
answer with these.
"""

from __future__ import annotations

import asyncio
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
from serve_app.rest import ErrorBody

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


def error_reply(error: ServingError, errors: ErrorBody = tfserving_error_body) -> Reply:
    """The error in the body of the route's group (``errors``; TF Serving's by default), with
    its status and headers."""
    return Reply(json_bytes(errors(error)), error.status_code, headers=dict(error.headers or {}))


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
    watch = _Watch(idle_timeout_s, deadline)
    try:
        while True:
            message = await receive()
            watch.last = watch.loop.time()
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
    except asyncio.CancelledError:
        budget.give(size)
        if watch.fired is None or watch.task.uncancel() > 0:
            raise  # cancelled from outside (the client left, the replica stops)
        raise watch.error(size, declared) from None
    except BaseException:
        budget.give(size)
        raise
    finally:
        watch.handle.cancel()


class _Watch:
    """Ends a body read that makes no progress for ``idle_s``, or runs past ``deadline``,
    by cancelling its task. One timer per read, moved on only when it fires: cheaper than a
    timeout around every ``receive()`` (a few microseconds a request).
    Nothing else bounds the read: the ASGI server waits for the rest of a body as long as the
    connection lives (HAProxy: ``timeout client``, an hour by default)."""

    __slots__ = ("deadline", "fired", "handle", "idle_s", "last", "loop", "task")

    def __init__(self, idle_s: float, deadline: float | None) -> None:
        # The loop's clock is time.monotonic, the deadline's.
        self.loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None  # read_body runs in a request's task
        self.task = task
        self.idle_s = idle_s
        self.deadline = deadline
        self.last = self.loop.time()  # when the last message arrived
        self.fired: str | None = None
        self.handle = self.loop.call_at(self._due(), self._check)

    def _due(self) -> float:
        due = self.last + self.idle_s
        return due if self.deadline is None else min(due, self.deadline)

    def _check(self) -> None:
        now = self.loop.time()
        if self.deadline is not None and now >= self.deadline:
            self.fired = "deadline"
        elif now >= self.last + self.idle_s:
            self.fired = "idle"
        else:  # bytes came since it was set: wait for the new due time
            self.handle = self.loop.call_at(self._due(), self._check)
            return
        self.task.cancel()

    def error(self, size: int, declared: str | None) -> ServingError:
        of = f" of {_brief(declared)}" if declared is not None else ""
        if self.fired == "deadline":
            return DeadlineExceeded(
                f"the request body was still arriving at the request's deadline ({size}{of}"
                " bytes received; X-Request-Timeout-Seconds or ingress.request_timeout_s)"
            )
        return RequestTimeout(
            f"the request body stopped arriving: no bytes for {self.idle_s:g} s after"
            f" {size}{of} bytes (ingress.body_idle_timeout_s); send the whole body without"
            " pausing"
        )


def _brief(text: str) -> str:
    return text if len(text) <= 32 else text[:32] + "..."
