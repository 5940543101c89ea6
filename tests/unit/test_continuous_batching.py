"""Continuous batching (``deployments/decoding.py``) on a real, locally built tiny GPT-2,
in-process: sequences join and leave the running batch at each step and each one still gets
exactly what ``generate()`` gives it alone; seeds, cancellation, deadlines and the bounds."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from deployments.decoding import LENGTH, DecodingEngine, Sampling, Sequence
from deployments.transformers import TransformersModel
from serve_app.config import ModelSpec
from serve_app.errors import DeadlineExceeded, InvalidInput, Overloaded
from serve_app.examples import build_tiny_gpt2

PROMPTS = [
    "Once upon a time",
    "The quick brown fox jumps over the lazy dog and then",
    "Hello",
    "Models are",
]


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    version = build_tiny_gpt2(tmp_path_factory.mktemp("gpt2")) / "1"
    tokenizer = AutoTokenizer.from_pretrained(version)
    model = AutoModelForCausalLM.from_pretrained(version, use_safetensors=True).eval()
    return model, tokenizer


def _engine(
    gpt2: tuple[Any, Any],
    prefill: str = "own_thread",
    decoding: Any = None,
    overlap_from_step_s: float = 0.0,
    **limits: Any,
) -> DecodingEngine:
    """An engine over tiny GPT-2; ``prefill`` as the ``transformers.prefill`` option."""
    model, tokenizer = gpt2
    settings = {"max_rows": 8, "max_tokens": 100_000, "max_queued": None, **limits}
    return DecodingEngine(
        model,
        "cpu",
        decoding or ThreadPoolExecutor(1),
        eos_ids=[tokenizer.eos_token_id],
        pad_id=tokenizer.eos_token_id,
        prefill_executor=ThreadPoolExecutor(1) if prefill == "own_thread" else None,
        overlap_from_step_s=overlap_from_step_s,
        **settings,
    )


class HeldSteps(ThreadPoolExecutor):
    """The decoding thread, whose calls wait while ``open`` is clear."""

    def __init__(self) -> None:
        super().__init__(1)
        self.open = threading.Event()
        self.open.set()
        self.held = threading.Event()  # a call is waiting

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        def when_open() -> Any:
            if not self.open.is_set():
                self.held.set()
                self.open.wait()
            return fn(*args, **kwargs)

        return super().submit(when_open)


def _alone(gpt2: tuple[Any, Any], prompt: str, budget: int) -> list[int]:
    """What ``generate()`` makes of one prompt by itself, greedily."""
    model, tokenizer = gpt2
    encoded = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(
            **encoded, max_new_tokens=budget, do_sample=False, pad_token_id=tokenizer.eos_token_id
        )
    ids = out[0, encoded["input_ids"].shape[1] :].tolist()
    eos = tokenizer.eos_token_id
    return ids[: ids.index(eos)] if eos in ids else ids


async def _collect(engine: DecodingEngine, sequence: Sequence) -> list[int]:
    tokens: list[int] = []
    async for new in engine.follow(sequence):
        tokens.extend(new)
    return tokens


def _submit(engine: DecodingEngine, tokenizer: Any, prompt: str, budget: int, **kw: Any) -> Any:
    sampling = kw.pop("sampling", Sampling())
    return engine.submit(tokenizer(prompt)["input_ids"], budget, sampling, kw.get("deadline"))


@pytest.mark.parametrize("prefill", ["own_thread", "between_steps"])
def test_sequences_joining_at_different_steps_each_get_what_they_get_alone(
    gpt2: tuple[Any, Any], prefill: str
) -> None:
    """Rows of different prompt lengths join a running batch (left-padded in), leave it at
    different steps (cut out, columns trimmed): greedy tokens equal generate() alone."""
    _, tokenizer = gpt2
    budgets = [40, 7, 30, 12]
    engine = _engine(gpt2, prefill)

    async def scenario() -> list[list[int]]:
        async def one(index: int) -> list[int]:
            await asyncio.sleep(0.003 * index * index)  # join at different steps
            sequence = _submit(engine, tokenizer, PROMPTS[index], budgets[index])
            return await _collect(engine, sequence)

        return await asyncio.gather(*(one(i) for i in range(len(PROMPTS))))

    got = asyncio.run(scenario())
    assert got == [_alone(gpt2, p, b) for p, b in zip(PROMPTS, budgets)]
    assert engine.steps < sum(budgets)  # they shared steps


@pytest.mark.parametrize("prefill", ["own_thread", "between_steps"])
def test_slots_are_reused_widened_and_compacted_without_changing_any_answer(
    gpt2: tuple[Any, Any], prefill: str
) -> None:
    """Twelve sequences through four slots: finished rows' slots are taken over, a prompt
    longer than the batch widens it, and the cache is compacted as the load drains; each
    sequence still gets exactly its greedy tokens from generate() alone."""
    _, tokenizer = gpt2
    long_prompt = " ".join(PROMPTS * 3)  # longer than any row of the batch when it joins
    prompts = [PROMPTS[i % 4] if i != 7 else long_prompt for i in range(12)]
    budgets = [5 + (7 * i) % 23 for i in range(12)]
    engine = _engine(gpt2, prefill, max_rows=4)

    async def scenario() -> list[list[int]]:
        async def one(index: int) -> list[int]:
            await asyncio.sleep(0.002 * index)
            return await _collect(
                engine, _submit(engine, tokenizer, prompts[index], budgets[index])
            )

        return await asyncio.gather(*(one(i) for i in range(12)))

    got = asyncio.run(scenario())
    assert got == [_alone(gpt2, p, b) for p, b in zip(prompts, budgets)]
    assert engine.rows == 0


def test_a_short_request_overtakes_long_ones(gpt2: tuple[Any, Any]) -> None:
    _, tokenizer = gpt2
    engine = _engine(gpt2)

    async def scenario() -> tuple[list[Sequence], Sequence]:
        long = [_submit(engine, tokenizer, p, 200) for p in PROMPTS]
        followers = [asyncio.ensure_future(_collect(engine, s)) for s in long]
        while min(len(s.generated) for s in long) < 20:  # the long ones are generating
            await asyncio.sleep(0.001)
        short = _submit(engine, tokenizer, "Hello", 8)
        await _collect(engine, short)
        progress = [len(s.generated) for s in long]
        await asyncio.gather(*followers)
        return long, short, progress

    long, short, progress = asyncio.run(scenario())
    assert short.finish_reason == LENGTH and len(short.generated) == 8
    assert all(20 <= done < 200 for done in progress), progress  # finished before them
    assert all(len(s.generated) == 200 for s in long)


def test_a_joining_request_gets_its_first_token_while_the_batch_decodes(
    gpt2: tuple[Any, Any],
) -> None:
    """With prefill on its own thread, a request's first token does not wait for the
    decoding step in progress: it arrives while that step is held, and the request then
    joins the batch and gets exactly its greedy tokens."""
    _, tokenizer = gpt2
    steps = HeldSteps()
    engine = _engine(gpt2, decoding=steps)

    async def scenario() -> tuple[list[int], list[int], int]:
        running = _submit(engine, tokenizer, "Once upon a time", 60)
        follower = asyncio.ensure_future(_collect(engine, running))
        while len(running.generated) < 3:
            await asyncio.sleep(0.001)
        steps.open.clear()
        while not steps.held.is_set():  # a decoding step waits
            await asyncio.sleep(0.001)
        held_at = len(running.generated)
        joining = _submit(engine, tokenizer, "Hello", 12)
        tokens = engine.follow(joining)
        first = await asyncio.wait_for(anext(tokens), timeout=60)
        assert len(running.generated) == held_at  # the batch has not stepped since
        steps.open.set()
        rest = [t async for new in tokens for t in new]
        await follower
        return first + rest, running.generated, held_at

    joined, running, held_at = asyncio.run(scenario())
    assert held_at < 60
    assert joined == _alone(gpt2, "Hello", 12)
    assert running == _alone(gpt2, "Once upon a time", 60)


def test_prefills_wait_for_the_step_when_steps_are_shorter_than_the_overlap_bound(
    gpt2: tuple[Any, Any],
) -> None:
    """``prefill: auto`` on a model whose steps are short: the prefill thread exists, but a
    joining request is prefilled only once the step in progress ends."""
    _, tokenizer = gpt2
    steps = HeldSteps()
    engine = _engine(gpt2, decoding=steps, overlap_from_step_s=10.0)

    async def scenario() -> tuple[list[int], int]:
        running = _submit(engine, tokenizer, "Once upon a time", 60)
        follower = asyncio.ensure_future(_collect(engine, running))
        while len(running.generated) < 3:
            await asyncio.sleep(0.001)
        steps.open.clear()
        while not steps.held.is_set():
            await asyncio.sleep(0.001)
        joining = _submit(engine, tokenizer, "Hello", 12)
        await asyncio.sleep(0.3)  # a prefill beside the held step would have ended by now
        waited = len(joining.generated)
        steps.open.set()
        tokens = await _collect(engine, joining)
        await follower
        return tokens, waited

    tokens, waited = asyncio.run(scenario())
    assert waited == 0
    assert tokens == _alone(gpt2, "Hello", 12)


def test_seeded_sampling_is_the_same_alone_and_amid_others(gpt2: tuple[Any, Any]) -> None:
    """Each sequence draws from its own seeded generator: its tokens do not depend on what
    else is in the batch, and torch's global generator is never touched."""
    _, tokenizer = gpt2
    seeded = Sampling(temperature=1.5, top_p=0.9, seed=1234)

    async def alone() -> list[int]:
        engine = _engine(gpt2)
        return await _collect(engine, _submit(engine, tokenizer, "Models are", 24, sampling=seeded))

    async def amid_others() -> list[list[int]]:
        engine = _engine(gpt2)
        others = [Sampling(1.0), Sampling(), Sampling(0.7, 0.5), Sampling(2.0, 1.0, 7)]
        rows = [_submit(engine, tokenizer, p, 24, sampling=s) for p, s in zip(PROMPTS, others)]
        await asyncio.sleep(0.01)
        mine = _submit(engine, tokenizer, "Models are", 24, sampling=seeded)
        results = await asyncio.gather(*(_collect(engine, s) for s in [mine, *rows]))
        return results

    before = torch.random.get_rng_state()
    reference = asyncio.run(alone())
    mixed = asyncio.run(amid_others())
    assert torch.equal(before, torch.random.get_rng_state())
    assert mixed[0] == reference
    assert mixed[2] == _alone(gpt2, PROMPTS[1], 24)  # the greedy row beside sampled ones


def test_unseeded_requests_draw_different_tokens(gpt2: tuple[Any, Any]) -> None:
    _, tokenizer = gpt2
    engine = _engine(gpt2)

    async def scenario() -> list[list[int]]:
        rows = [_submit(engine, tokenizer, "Models are", 16, sampling=Sampling(2.0)) for _ in "ab"]
        return await asyncio.gather(*(_collect(engine, s) for s in rows))

    first, second = asyncio.run(scenario())
    assert first != second


def test_a_cancelled_sequence_frees_its_row_for_the_next(gpt2: tuple[Any, Any]) -> None:
    _, tokenizer = gpt2
    engine = _engine(gpt2, max_rows=1)

    async def scenario() -> tuple[Sequence, Sequence]:
        first = _submit(engine, tokenizer, "Once upon a time", 200)
        tokens = engine.follow(first)
        await anext(tokens)
        second = _submit(engine, tokenizer, "Hello", 5)  # waits: one row only
        await asyncio.sleep(0.05)
        assert second.generated == []
        await tokens.aclose()  # the client went away
        await _collect(engine, second)
        return first, second

    first, second = asyncio.run(scenario())
    assert first.cancelled and len(first.generated) < 200
    assert len(second.generated) == 5 and engine.rows == 0


def test_a_sequence_past_its_deadline_ends_with_504_and_frees_its_row(
    gpt2: tuple[Any, Any],
) -> None:
    _, tokenizer = gpt2
    engine = _engine(gpt2, max_rows=1)

    async def scenario() -> tuple[Sequence, Sequence]:
        late = _submit(engine, tokenizer, "Once upon a time", 1000, deadline=time.time() + 0.2)
        # 1000 tokens would not fit tiny-gpt2's context, but the deadline ends it long before.
        nxt = _submit(engine, tokenizer, "Hello", 5)
        with pytest.raises(DeadlineExceeded, match="deadline"):
            await _collect(engine, late)
        await _collect(engine, nxt)
        return late, nxt

    late, nxt = asyncio.run(scenario())
    assert 0 < len(late.generated) < 1000 and len(nxt.generated) == 5


def test_the_token_bound_makes_requests_wait_and_the_queue_bound_refuses(
    gpt2: tuple[Any, Any],
) -> None:
    _, tokenizer = gpt2
    prompt_tokens = len(tokenizer("Hello")["input_ids"])
    # Room for one sequence of (prompt + 40) tokens at a time, and one waiting.
    engine = _engine(gpt2, max_tokens=prompt_tokens + 40, max_queued=1)
    widest = []

    async def scenario() -> None:
        async def watch() -> None:
            while True:
                widest.append(engine.rows)
                await asyncio.sleep(0)

        watcher = asyncio.ensure_future(watch())
        first = _submit(engine, tokenizer, "Hello", 40)  # admitted at once: prefilling
        second = _submit(engine, tokenizer, "Hello", 40)  # waits for room
        with pytest.raises(Overloaded, match="max_queued_requests 1"):
            _submit(engine, tokenizer, "Hello", 40)
        await asyncio.gather(_collect(engine, first), _collect(engine, second))
        watcher.cancel()

    asyncio.run(scenario())
    assert max(widest) == 1


@pytest.fixture(scope="module")
def servable(tmp_path_factory: pytest.TempPathFactory) -> TransformersModel:
    root = build_tiny_gpt2(tmp_path_factory.mktemp("served"))
    spec = ModelSpec(
        name="tiny-gpt2",
        framework="transformers",
        task="text-generation",
        uri=str(root),
        transformers={"max_tokens_in_flight": 64},
    )
    model = TransformersModel(spec, Path(root) / "1", ThreadPoolExecutor(1))
    model.warm_up()
    return model


def test_a_request_that_cannot_fit_the_token_bound_alone_is_refused(
    servable: TransformersModel,
) -> None:
    inputs = {
        "text": np.array(["Once upon a time"], dtype=object),
        "max_new_tokens": np.array([60]),
    }
    with pytest.raises(InvalidInput, match=r"max_tokens_in_flight \(64\)"):
        servable.check_request(inputs, {})


def test_request_level_batching_stays_behind_a_setting(tmp_path: Path) -> None:
    root = build_tiny_gpt2(tmp_path)
    spec = ModelSpec(
        name="tiny-gpt2",
        framework="transformers",
        task="text-generation",
        uri=str(root),
        transformers={"generation_batching": "request"},
    )
    model = TransformersModel(spec, Path(root) / "1", ThreadPoolExecutor(1))
    assert model._engine is None
    inputs = {"text": np.array(["Hello"], dtype=object), "max_new_tokens": np.array([4])}
    assert model.infer("serving_default", inputs, {})["_completion_tokens"][0] == 4

    async def stream() -> list[dict]:
        return [item async for item in model.generate_stream("Hello", 4, {})]

    assert asyncio.run(stream())[-1]["completion_tokens"] == 4
