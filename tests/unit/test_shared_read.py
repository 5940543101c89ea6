"""SharedRead: concurrent callers share one reading; a young enough reading is not redone."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.shared_read import SharedRead


def test_concurrent_callers_share_one_reading_and_a_young_one_is_kept() -> None:
    readings = 0

    async def read() -> None:
        nonlocal readings
        readings += 1
        await asyncio.sleep(0.05)

    async def scenario() -> None:
        shared = SharedRead(read)
        await asyncio.gather(*(shared.refresh(max_age=60) for _ in range(10)))
        assert readings == 1
        await shared.refresh(max_age=60)  # 0.05 s old: young enough
        assert readings == 1
        await shared.refresh(max_age=0)  # any age is too old
        assert readings == 2

    asyncio.run(scenario())


def test_a_failed_reading_counts_as_read_and_its_error_reaches_the_callers() -> None:
    readings = 0

    async def read() -> None:
        nonlocal readings
        readings += 1
        raise ConnectionError("controller restarting")

    async def scenario() -> None:
        shared = SharedRead(read)
        with pytest.raises(ConnectionError, match="restarting"):
            await shared.refresh(max_age=60)
        await shared.refresh(max_age=60)  # not retried at once by the next caller
        assert readings == 1

    asyncio.run(scenario())
