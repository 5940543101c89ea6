"""The replica core's batch isolation, as pure asyncio code around a stand-in model."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deployments.batching import BatchItem, BatchStats
from deployments.core import ReplicaCore
from serve_app.errors import DeadlineExceeded, ServingError


class Fragile:
    """Doubles its input; a call holding a negative row raises (a row that breaks a model)."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def infer(
        self, signature: str, inputs: dict, parameters: dict, stop: Any = None
    ) -> dict[str, np.ndarray]:
        self.calls.append(len(inputs["x"]))
        self.stop = stop
        if (inputs["x"] < 0).any():
            raise ValueError("the tokenizer choked on a row")
        return {"y": inputs["x"] * 2}


@dataclass
class _Version:
    servable: Any


@dataclass
class _Table:
    versions: dict[int, _Version]


@dataclass
class Host:
    """What the core reads of a model host: its name, versions and statistics."""

    servable: Any
    name: str = "m"
    stats: BatchStats = field(default_factory=BatchStats)

    @property
    def table(self) -> _Table:
        return _Table({1: _Version(self.servable)})


def _item(host: Host, value: float, deadline: float | None = None) -> BatchItem:
    return BatchItem("", {"x": np.array([value])}, 1, {}, "g", 1, host, deadline)


def test_a_failing_model_call_is_retried_apart_so_only_the_breaking_row_fails() -> None:
    async def scenario() -> list[Any]:
        model = Fragile()
        core = ReplicaCore("m", 8, 0.0)
        host = Host(model)
        results = await core._run_batch([_item(host, v) for v in (1.0, -1.0, 3.0)])
        assert model.calls == [3, 1, 2, 1, 1]  # the batch, its halves, the failed half's
        return results

    first, bad, third = asyncio.run(scenario())
    assert first["y"].tolist() == [2.0] and third["y"].tolist() == [6.0]
    assert isinstance(bad, ServingError) and "ValueError" in str(bad)


def test_a_long_call_is_told_when_nobody_waits_for_it_any_more() -> None:
    async def scenario() -> None:
        model = Fragile()
        core = ReplicaCore("m", 8, 0.0)
        host = Host(model)
        first, second = _item(host, 1.0), _item(host, 2.0, deadline=time.time() + 60)
        await core._run_batch([first, second])
        assert model.stop() is False  # both callers still wait
        first.future = asyncio.get_running_loop().create_future()
        first.future.cancel()  # its client went away
        second.deadline = time.time() - 1  # its deadline passed
        assert model.stop() is True

    asyncio.run(scenario())


def test_an_item_past_its_deadline_is_not_run() -> None:
    async def scenario() -> list[Any]:
        model = Fragile()
        core = ReplicaCore("m", 8, 0.0)
        host = Host(model)
        results = await core._run_batch([_item(host, 1.0), _item(host, 2.0, deadline=1.0)])
        assert model.calls == [1]
        return results

    done, late = asyncio.run(scenario())
    assert done["y"].tolist() == [2.0]
    assert isinstance(late, DeadlineExceeded)


class ScalarWhenBatched(Fragile):
    """Answers one row well, but a batch of rows with a scalar (an output that cannot be cut
    back into per-item outputs)."""

    def infer(
        self, signature: str, inputs: dict, parameters: dict, stop: Any = None
    ) -> dict[str, np.ndarray]:
        outputs = super().infer(signature, inputs, parameters, stop)
        return {"y": np.float32(inputs["x"].sum())} if len(inputs["x"]) > 1 else outputs


def test_outputs_that_cannot_be_split_fail_the_call_and_each_item_is_retried_alone() -> None:
    async def scenario() -> list[Any]:
        model = ScalarWhenBatched()
        core = ReplicaCore("m", 8, 0.0)
        host = Host(model)
        results = await core._run_batch([_item(host, v) for v in (1.0, 2.0)])
        assert model.calls == [2, 1, 1]
        return results

    first, second = asyncio.run(scenario())
    assert first["y"].tolist() == [2.0] and second["y"].tolist() == [4.0]


def test_one_bad_row_in_32_costs_2_log2_32_plus_1_calls_not_33() -> None:
    async def scenario() -> list[Any]:
        model = Fragile()
        core = ReplicaCore("m", 32, 0.0)
        host = Host(model)
        values = [float(v) for v in range(32)]
        values[21] = -1.0
        results = await core._run_batch([_item(host, v) for v in values])
        # The batch, then halves down to the bad row (depth first): at each level one good
        # and one bad half, 2 log2(32) + 1 = 11 calls where one per row would be 33.
        assert model.calls == [32, 16, 16, 8, 4, 4, 2, 1, 1, 2, 8]
        return results

    results = asyncio.run(scenario())
    assert isinstance(results[21], ServingError) and "ValueError" in str(results[21])
    for i, result in enumerate(results):
        if i != 21:
            assert result["y"].tolist() == [2.0 * i]


class GivesUpOnTheFirstCall(Fragile):
    """As Fragile, but while the first call runs, the caller of ``leaver`` goes away."""

    leaver: BatchItem | None = None
    seen: list[list[float]] = []

    def infer(
        self, signature: str, inputs: dict, parameters: dict, stop: Any = None
    ) -> dict[str, np.ndarray]:
        if self.leaver is not None and not self.calls:
            self.leaver.deadline = time.time() - 1
        self.seen = [*self.seen, inputs["x"].tolist()]
        return super().infer(signature, inputs, parameters, stop)


def test_a_member_that_gave_up_during_a_failed_call_is_not_run_again() -> None:
    async def scenario() -> list[Any]:
        model = GivesUpOnTheFirstCall()
        core = ReplicaCore("m", 8, 0.0)
        host = Host(model)
        items = [_item(host, v, deadline=time.time() + 60) for v in (1.0, 2.0, -1.0, 4.0)]
        model.leaver = items[1]
        results = await core._run_batch(items)
        # The batch of 4 fails; of its first half only 1.0 still waits, so 2.0 never runs
        # again; the second half fails and is halved.
        assert model.seen == [[1.0, 2.0, -1.0, 4.0], [1.0], [-1.0, 4.0], [-1.0], [4.0]]
        return results

    one, left, bad, four = asyncio.run(scenario())
    assert one["y"].tolist() == [2.0] and four["y"].tolist() == [8.0]
    assert isinstance(left, DeadlineExceeded)
    assert isinstance(bad, ServingError) and "ValueError" in str(bad)
