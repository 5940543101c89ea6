"""The dynamic batcher: batches form when the model is free, bounded in rows."""

from __future__ import annotations

import asyncio

import pytest

from deployments.batcher import DynamicBatcher


class Model:
    """Records each batch; ``release`` lets a running batch finish."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()

    async def __call__(self, items: list[int]) -> list[object]:
        self.batches.append(items)
        await self.release.wait()
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]


def test_requests_queued_while_a_batch_runs_form_the_next_batch() -> None:
    async def scenario() -> None:
        model = Model()
        batcher = DynamicBatcher(model, lambda rows: abs(rows) or 1, 8, 0.0)
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.01)  # the first request runs alone, with no wait
        assert model.batches == [[1]]
        rest = [asyncio.ensure_future(batcher.submit(r)) for r in (2, 3, -1, 4)]
        await asyncio.sleep(0.01)
        assert model.batches == [[1]]  # queued behind the running batch
        model.release.set()
        assert await first == 10
        assert await asyncio.gather(*rest[:2]) == [20, 30]
        with pytest.raises(ValueError, match="bad -1"):
            await rest[2]  # one item's error reaches that caller only
        # 2 + 3 + 1 rows fit in 8; the 4-row item would not, so it runs next.
        assert model.batches == [[1], [2, 3, -1], [4]]
        assert await rest[3] == 40

    asyncio.run(scenario())


def test_a_wait_merges_arrivals_and_cancelled_callers_are_dropped() -> None:
    async def scenario() -> None:
        model = Model()
        model.release.set()
        batcher = DynamicBatcher(model, lambda rows: 1, 4, 0.05)
        gone = asyncio.ensure_future(batcher.submit(5))
        kept = [asyncio.ensure_future(batcher.submit(r)) for r in (6, 7)]
        await asyncio.sleep(0)
        gone.cancel()
        assert await asyncio.gather(*kept) == [60, 70]
        assert model.batches == [[6, 7]]
        batcher.configure(2, 0.0)
        assert await asyncio.gather(*(batcher.submit(r) for r in (1, 2, 3))) == [10, 20, 30]
        assert model.batches[1:] == [[1, 2], [3]]

    asyncio.run(scenario())
