"""Continuous batching through the served stack (real Serve, real tiny GPT-2, the real
`openai` client): a short request overtakes long ones, and every protocol's generation goes
through the same running batch (TF Serving rows with their own budgets answer as the
OpenAI route does)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

pytestmark = pytest.mark.integration

LONG_TOKENS = 200  # tiny-gpt2's random weights never end a text early
PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def client(fleet: dict) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{fleet['url']}/v1", api_key="unused", max_retries=0)


def test_a_short_request_finishes_while_long_ones_are_still_streaming(
    client: openai.OpenAI,
) -> None:
    started = threading.Barrier(5)
    finished_at: list[float] = []

    def long_stream(_: int) -> int:
        tokens = 0
        stream = client.completions.create(
            model="tiny-gpt2", prompt=PROMPT, max_tokens=LONG_TOKENS, temperature=0, stream=True
        )
        for _chunk in stream:
            tokens += 1
            if tokens == 5:
                started.wait(timeout=60)  # all four long ones are generating
        finished_at.append(time.monotonic())
        return tokens

    with ThreadPoolExecutor(4) as pool:
        longs = [pool.submit(long_stream, i) for i in range(4)]
        started.wait(timeout=60)
        short = client.completions.create(
            model="tiny-gpt2", prompt="Hello", max_tokens=8, temperature=0
        )
        short_done = time.monotonic()
        counts = [future.result(timeout=120) for future in longs]
    assert short.usage.completion_tokens == 8 and short.choices[0].finish_reason == "length"
    assert all(count > 8 for count in counts)
    assert short_done < min(finished_at)  # it did not wait for any long one to end


def test_tf_serving_rows_with_their_own_budgets_answer_as_openai_does(
    client: openai.OpenAI, fleet: dict
) -> None:
    """One predict of three rows with different max_new_tokens: each row is a sequence of
    its own in the running batch and ends at its own budget."""
    prompts = ["Once upon a time", "Hello", "Models are"]
    budgets = [3, 9, 5]
    body = {"instances": [{"text": p, "max_new_tokens": b} for p, b in zip(prompts, budgets)]}
    answer = requests.post(f"{fleet['url']}/v1/models/tiny-gpt2:predict", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    for prompt, budget, text in zip(prompts, budgets, answer.json()["predictions"]):
        alone = client.completions.create(
            model="tiny-gpt2", prompt=prompt, max_tokens=budget, temperature=0
        )
        assert text == prompt + alone.choices[0].text
        assert alone.usage.completion_tokens == budget
