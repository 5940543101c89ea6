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

    async def refresh(self, max_age: float, timeout: float | None = None) -> bool:
        """Return once a reading at most ``max_age`` seconds old has finished (True), or
        after ``timeout`` seconds without one (False; None: no limit). A reading still
        running then goes on, for whoever asks next."""
        if time.monotonic() - self._read_at < max_age:
            return True
        if self._running is None or self._running.done():
            self._running = asyncio.get_running_loop().create_task(self._run())
        running = self._running
        if timeout is None:
            await asyncio.shield(running)
            return True
        # wait() never cancels the reading; a caller out of time just stops waiting for it.
        done, _ = await asyncio.wait({running}, timeout=max(0.0, timeout))
        if not done:
            return False
        running.result()  # its error, if it failed, as for callers without a limit
        return True

    async def _run(self) -> None:
        try:
            await self._read()
        finally:
            self._read_at = time.monotonic()
