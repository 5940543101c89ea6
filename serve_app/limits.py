"""Bounds on the work the ingress holds for all requests together."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from serve_app.errors import Overloaded

T = TypeVar("T")


class BodyBudget:
    """The bytes of request bodies the ingress holds at once, over all requests.

    Each body is bounded by ``max_request_bytes``, but a thousand concurrent 32 MiB bodies
    would still take 32 GiB: past ``max_buffered_bytes`` a request is refused with 503 and
    ``Retry-After`` while its body is read, before it is held.
    """

    def __init__(self, limit: int, retry_after_s: int | None = 1) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.held = 0

    def take(self, size: int) -> None:
        if self.held + size > self.limit:
            raise Overloaded(
                f"the ingress holds {self.held} bytes of request bodies; the limit"
                f" (ingress.max_buffered_bytes) is {self.limit}. Retry later.",
                503,
                self.retry_after_s,
            )
        self.held += size

    def give(self, size: int) -> None:
        self.held -= size


# Bodies larger than this are parsed and decoded on a worker thread, so that one large
# request never holds up the event loop that every other request of the replica shares.
OFF_LOOP_BYTES = 256 * 1024


async def decode(size: int, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``: at once for a small body, on a worker thread for a large one."""
    if size <= OFF_LOOP_BYTES:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)
