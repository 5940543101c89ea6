"""The ingress's per-model coalescing, as pure asyncio code (the handle call is a function)."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from typing import Any

import numpy as np
import pytest
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError

from serve_app.coalesce import Coalescer, OverloadAnswer
from serve_app.errors import InvalidInput, ModelUnavailable, Overloaded, ServingError
from serve_app.request import PredictRequest


def _request(value: float) -> PredictRequest:
    return PredictRequest({None: np.array([[value]], dtype=np.float32)})


class FakeModel:
    """Answers each request of a call with its own value times two; value < 0 is a bad one."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, requests: list[PredictRequest]) -> list:
        self.calls.append(len(requests))
        await self.release.wait()
        answers = []
        for request in requests:
            value = float(request.inputs[None][0, 0])
            answers.append(InvalidInput("negative") if value < 0 else (1, {"y": value * 2}))
        return answers


def test_requests_that_arrive_during_a_call_travel_together_and_answer_apart() -> None:
    async def scenario() -> None:
        model = FakeModel()
        model.release.clear()  # the first calls wait: later requests must queue
        coalescer = Coalescer("m", model, max_rows_per_call=100)
        futures = [coalescer.submit(_request(v), 1, 4) for v in [1, 2, -3, 4, 5, 6, 7, 8]]
        await asyncio.sleep(0)
        assert coalescer.waiting == 6  # two calls left at once (CALLS_PER_REPLICA), one each
        model.release.set()
        answers = await asyncio.gather(*futures)
        assert model.calls == [1, 1, 6]
        assert answers[0] == (1, {"y": 2.0}) and answers[7] == (1, {"y": 16.0})
        assert isinstance(answers[2], InvalidInput)  # the bad one alone
        assert [a[1]["y"] for i, a in enumerate(answers) if i != 2] == [2, 4, 8, 10, 12, 14, 16]

    asyncio.run(scenario())


def test_a_request_submitted_alone_gets_a_handle_call_of_its_own() -> None:
    async def scenario() -> None:
        model = FakeModel()
        model.release.clear()
        coalescer = Coalescer("m", model, max_rows_per_call=4)
        shared = [coalescer.submit(_request(v), 1, 4) for v in (1, 2)]  # both slots busy
        alone = [coalescer.submit(_request(v), 1, 4, alone=True) for v in (3, 4)]
        rest = [coalescer.submit(_request(v), 1, 4) for v in (5, 6)]
        await asyncio.sleep(0)
        model.release.set()
        await asyncio.gather(*shared, *alone, *rest)
        assert model.calls == [1, 1, 1, 1, 2]  # 3 and 4 alone; 5 and 6 together

        # Alone, as many rows are in flight as coalesced calls would carry (2 calls of
        # max_rows_per_call), so that the replica can still batch them.
        model.calls.clear()
        model.release.clear()
        many = [coalescer.submit(_request(v), 1, 4, alone=True) for v in range(10)]
        await asyncio.sleep(0)
        assert model.calls == [1] * 8 and coalescer.waiting == 2
        model.release.set()
        await asyncio.gather(*many)
        assert model.calls == [1] * 10

    asyncio.run(scenario())


def test_a_call_carries_at_most_one_batch_of_rows() -> None:
    async def scenario() -> None:
        model = FakeModel()
        model.release.clear()
        coalescer = Coalescer("m", model, max_rows_per_call=4, replicas=lambda: 1)
        futures = [coalescer.submit(_request(v), 1, 4) for v in range(12)]
        await asyncio.sleep(0)
        model.release.set()
        await asyncio.gather(*futures)
        assert model.calls[:2] == [1, 1] and max(model.calls) == 4 and sum(model.calls) == 12

    asyncio.run(scenario())


def test_past_max_queued_the_model_answers_overloaded_with_retry_after() -> None:
    async def scenario() -> None:
        model = FakeModel()
        model.release.clear()
        coalescer = Coalescer("m", model, max_queued=2, overload=OverloadAnswer(429, 3))
        futures = [coalescer.submit(_request(v), 1, 4) for v in range(4)]  # 2 sent, 2 wait
        with pytest.raises(Overloaded) as refused:
            coalescer.submit(_request(9), 1, 4)
        assert refused.value.status_code == 429
        assert refused.value.headers == {"Retry-After": "3"}
        assert "max_queued_requests 2" in str(refused.value)
        model.release.set()
        await asyncio.gather(*futures)

    asyncio.run(scenario())


def test_a_request_whose_caller_gave_up_before_its_call_left_is_not_sent() -> None:
    async def scenario() -> None:
        model = FakeModel()
        model.release.clear()
        coalescer = Coalescer("m", model)
        futures = [coalescer.submit(_request(v), 1, 4) for v in range(5)]
        futures[3].cancel()  # e.g. its deadline passed while it waited
        model.release.set()
        await asyncio.gather(*(f for i, f in enumerate(futures) if i != 3))
        assert sum(model.calls) == 4

    asyncio.run(scenario())


def test_a_call_that_fails_as_a_whole_answers_each_of_its_requests() -> None:
    async def scenario() -> None:
        async def dead(requests: list[PredictRequest]) -> list:
            raise RayActorError()

        coalescer = Coalescer("m", dead)
        answers = await asyncio.gather(*(coalescer.submit(_request(v), 1, 4) for v in range(3)))
        assert all(isinstance(a, ModelUnavailable) and "died" in str(a) for a in answers)

    asyncio.run(scenario())


def test_a_call_whose_requests_all_gave_up_is_cancelled() -> None:
    async def scenario() -> None:
        started, cancelled = asyncio.Event(), asyncio.Event()

        async def slow(requests: list[PredictRequest]) -> list:
            started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return []

        coalescer = Coalescer("m", slow)
        future = coalescer.submit(_request(1), 1, 4)
        await started.wait()
        future.cancel()
        await asyncio.wait_for(cancelled.wait(), 5)

    asyncio.run(scenario())


def test_a_failed_model_answers_everything_waiting_for_it() -> None:
    async def scenario() -> None:
        model = FakeModel()
        model.release.clear()
        coalescer = Coalescer("m", model)
        futures = [coalescer.submit(_request(v), 1, 4) for v in range(5)]
        coalescer.fail(ModelUnavailable("model 'm' is not available: it failed"))
        answers = await asyncio.gather(*futures)
        assert all(isinstance(a, ModelUnavailable) for a in answers)
        model.release.set()

    asyncio.run(scenario())


def test_requests_whose_callers_gave_up_free_their_place_and_tensors_at_once() -> None:
    async def scenario() -> None:
        model = FakeModel()
        model.release.clear()
        coalescer = Coalescer("m", model, max_queued=2)
        sent = [coalescer.submit(_request(v), 1, 4) for v in range(2)]  # both calls in flight
        held = _request(2)
        tensors = weakref.ref(held.inputs[None])
        waiting = [coalescer.submit(held, 1, 4), coalescer.submit(_request(3), 1, 4)]
        del held
        assert coalescer.waiting == 2
        for future in waiting:
            future.cancel()  # their clients went away, or their deadlines passed
        await asyncio.sleep(0)
        assert coalescer.waiting == 0 and coalescer.oldest_wait_s(time.monotonic()) < 60
        gc.collect()
        assert tensors() is None, "a departed request's tensors are still held"
        # Live clients get both places, not 503.
        live = [coalescer.submit(_request(v), 1, 4) for v in (4, 5)]
        model.release.set()
        answers = await asyncio.gather(*sent, *live)
        assert [a[1]["y"] for a in answers] == [0.0, 2.0, 8.0, 10.0]
        assert sum(model.calls) == 4  # the departed never left

    asyncio.run(scenario())


def test_many_departures_deep_in_the_queue_leave_it_bounded() -> None:
    async def scenario() -> None:
        model = FakeModel()
        model.release.clear()
        coalescer = Coalescer("m", model, max_queued=10)
        first = [coalescer.submit(_request(v), 1, 4) for v in range(3)]  # 2 sent, 1 waits
        for _ in range(50):  # clients that come and go behind a waiting one
            futures = [coalescer.submit(_request(9), 1, 4) for _ in range(9)]
            for future in futures:
                future.cancel()
            await asyncio.sleep(0)
            assert coalescer.waiting == 1
        assert len(coalescer._queue) <= 64  # departed entries are swept, not kept
        model.release.set()
        await asyncio.gather(*first)
        assert sum(model.calls) == 3

    asyncio.run(scenario())


class Poisoned(FakeModel):
    """A call holding the request of value 13 fails as a whole, as a request that cannot be
    pickled fails its handle call."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[list[float]] = []
        self.on_call: Any = None

    async def __call__(self, requests: list[PredictRequest]) -> list:
        values = [float(r.inputs[None][0, 0]) for r in requests]
        self.sent.append(values)
        if self.on_call is not None:
            self.on_call(len(self.sent))
        if 13.0 in values:
            self.calls.append(len(requests))
            await self.release.wait()
            raise TypeError("cannot pickle '_thread.lock' object")
        return await super().__call__(requests)


def test_a_call_broken_by_one_request_is_retried_in_halves_and_that_request_fails_alone() -> None:
    async def scenario() -> None:
        model = Poisoned()
        model.release.clear()
        coalescer = Coalescer("m", model, max_rows_per_call=100)
        values = [100.0, 101.0, *range(8)]
        values[2 + 5] = 13.0
        futures = [coalescer.submit(_request(v), 1, 4) for v in values]
        model.release.set()
        answers = await asyncio.gather(*futures)
        # Two calls alone, then the call of 8 and its halves down to the request that broke it:
        # 7 calls for 8 requests, where one call per request would be 9.
        assert model.sent[2:] == [
            [0.0, 1.0, 2.0, 3.0, 4.0, 13.0, 6.0, 7.0],
            [0.0, 1.0, 2.0, 3.0],
            [4.0, 13.0, 6.0, 7.0],
            [4.0, 13.0],
            [4.0],
            [13.0],
            [6.0, 7.0],
        ]
        bad = answers[7]
        assert isinstance(bad, ServingError) and bad.status_code == 500
        assert "TypeError" in str(bad)
        good = [a for i, a in enumerate(answers) if i != 7]
        assert [a[1]["y"] for a in good] == [2 * v for i, v in enumerate(values) if i != 7]

    asyncio.run(scenario())


def test_requests_that_gave_up_are_not_sent_again_when_a_call_is_retried() -> None:
    async def scenario() -> None:
        model = Poisoned()
        model.release.clear()
        coalescer = Coalescer("m", model, max_rows_per_call=100)
        futures = [coalescer.submit(_request(v), 1, 4) for v in (100.0, 101.0, 1.0, 2.0, 13.0)]

        def leave(call: int) -> None:
            if call == 3:  # while the call of three runs, the caller of 1.0 goes away
                futures[2].cancel()

        model.on_call = leave
        model.release.set()
        answers = await asyncio.gather(*(f for i, f in enumerate(futures) if i != 2))
        assert model.sent == [[100.0], [101.0], [1.0, 2.0, 13.0], [2.0, 13.0], [2.0], [13.0]]
        assert answers[2][1]["y"] == 4.0 and isinstance(answers[3], ServingError)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (RayActorError(), ModelUnavailable),
        (BackPressureError(num_queued_requests=9, max_queued_requests=8), Overloaded),
        (ModelUnavailable("model 'm' is loading"), ModelUnavailable),
    ],
)
def test_a_call_failed_by_the_models_state_is_not_retried_per_request(
    failure: Exception, expected: type
) -> None:
    async def scenario() -> None:
        calls: list[int] = []
        gate = asyncio.Event()

        async def failing(requests: list[PredictRequest]) -> list:
            calls.append(len(requests))
            await gate.wait()
            raise failure

        coalescer = Coalescer("m", failing, max_rows_per_call=100)
        futures = [coalescer.submit(_request(v), 1, 4) for v in range(6)]
        await asyncio.sleep(0)
        gate.set()
        answers = await asyncio.gather(*futures)
        assert calls == [1, 1, 4]
        assert all(isinstance(a, expected) for a in answers)

    asyncio.run(scenario())
