"""The ingress's per-model coalescing, as pure asyncio code (the handle call is a function)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from ray.exceptions import RayActorError

from serve_app.coalesce import Coalescer, OverloadAnswer
from serve_app.errors import InvalidInput, ModelUnavailable, Overloaded
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
