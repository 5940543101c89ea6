"""A reading that concurrent callers share, redone only when it is older than they accept.

The ingress reads slow sources (Serve's controller, every model replica's report) on demand:
many requests or page loads at once must cause one reading, not one each.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class SharedRead:
    """Runs ``read`` when a caller needs a result younger than it has; one run at a time."""

    def __init__(self, read: Callable[[], Awaitable[None]]) -> None:
        self._read = read
        self._read_at = float("-inf")
        self._running: asyncio.Task | None = None

    async def refresh(self, max_age: float) -> None:
        """Return once a reading at most ``max_age`` seconds old has finished."""
        if time.monotonic() - self._read_at < max_age:
            return
        if self._running is None or self._running.done():
            self._running = asyncio.get_running_loop().create_task(self._run())
        await asyncio.shield(self._running)

    async def _run(self) -> None:
        try:
            await self._read()
        finally:
            self._read_at = time.monotonic()
