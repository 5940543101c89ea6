"""Generation stops when nobody waits for it: a real (tiny, locally built) GPT-2, in-process.

The model's forward calls are counted with a torch hook: a generation that stopped early
made far fewer of them than its token budget.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deployments.transformers import TransformersModel
from serve_app.config import ModelSpec
from serve_app.errors import DeadlineExceeded, InvalidInput
from serve_app.examples import build_tiny_gpt2

BUDGET = 200


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> tuple[TransformersModel, list[int]]:
    root = build_tiny_gpt2(tmp_path_factory.mktemp("gpt2"))
    spec = ModelSpec(
        name="tiny-gpt2", framework="transformers", task="text-generation", uri=str(root)
    )
    executor = ThreadPoolExecutor(1)
    model = TransformersModel(spec, Path(root) / "1", executor)
    forwards: list[int] = []
    model._model.register_forward_hook(lambda *args: forwards.append(1))
    return model, forwards


def _inputs(text: str, budget: int) -> dict[str, np.ndarray]:
    return {"text": np.array([text], dtype=object), "max_new_tokens": np.array([budget])}


def test_a_batch_nobody_waits_for_stops_generating(gpt2: tuple[Any, list[int]]) -> None:
    model, forwards = gpt2
    forwards.clear()
    full = model.infer("serving_default", _inputs("Once upon a time", BUDGET), {})
    assert full["_completion_tokens"][0] == BUDGET  # random weights: it never stops on its own
    steps_for_all = len(forwards)
    forwards.clear()
    calls = iter(range(10**6))
    stopped = model.infer(
        "serving_default", _inputs("Once upon a time", BUDGET), {}, lambda: next(calls) >= 3
    )
    assert len(forwards) <= 5 < steps_for_all
    assert stopped["_completion_tokens"][0] < BUDGET


def test_a_stream_whose_client_went_away_stops_generating(gpt2: tuple[Any, list[int]]) -> None:
    model, forwards = gpt2

    async def scenario() -> None:
        forwards.clear()
        stream = model.generate_stream("Once upon a time", BUDGET, {})
        first = await anext(stream)
        assert "text" in first
        await stream.aclose()  # the client disconnected
        # The inference thread is free once the generation has seen the stop.
        await asyncio.get_running_loop().run_in_executor(model._executor, lambda: None)

    asyncio.run(scenario())
    assert len(forwards) < BUDGET // 2


def test_a_stream_past_its_deadline_ends_with_an_error(gpt2: tuple[Any, list[int]]) -> None:
    model, _ = gpt2

    async def scenario() -> list[dict]:
        items = []
        stream = model.generate_stream("Once upon a time", BUDGET, {}, time.time() - 1)
        with pytest.raises(DeadlineExceeded, match="deadline"):
            async for item in stream:
                items.append(item)
        return items

    items = asyncio.run(scenario())
    assert all("finish_reason" not in item for item in items)


def test_texts_that_are_not_unicode_are_refused_before_batching(
    gpt2: tuple[Any, list[int]],
) -> None:
    model, _ = gpt2
    for bad in ("\ud800 lone surrogate", b"\xff\xfe not utf-8"):
        with pytest.raises(InvalidInput, match=r"input 'text'\[0\] is not valid"):
            model.check_request(_inputs(bad, 4), {})  # type: ignore[arg-type]


def test_a_prompt_far_longer_than_the_context_is_refused_before_tokenizing(
    gpt2: tuple[Any, list[int]],
) -> None:
    model, _ = gpt2
    with pytest.raises(InvalidInput, match="characters, more than the model's context"):
        model.check_request(_inputs("a" * 2_000_000, 4), {})
