"""OpenAI-compatible routes, driven with the real `openai` Python client (streaming included)."""

from __future__ import annotations

import base64

import numpy as np
import openai
import pytest
import requests

from tests.helpers import post_many

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(fleet: dict) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{fleet['url']}/v1", api_key="unused", max_retries=0)


def test_models_lists_the_transformers_models(client: openai.OpenAI) -> None:
    assert sorted(model.id for model in client.models.list()) == ["minilm", "tiny-gpt2"]


def test_completion_greedy_is_deterministic_with_usage(client: openai.OpenAI) -> None:
    kwargs = {"model": "tiny-gpt2", "prompt": "Once upon a time", "max_tokens": 5, "temperature": 0}
    first = client.completions.create(**kwargs)
    second = client.completions.create(**kwargs)
    assert first.choices[0].text == second.choices[0].text != ""
    assert first.choices[0].finish_reason in ("length", "stop")
    usage = first.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 5
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_completion_list_of_prompts_and_n(client: openai.OpenAI) -> None:
    result = client.completions.create(
        model="tiny-gpt2", prompt=["The quick brown fox", "Once upon"], max_tokens=3, n=2, seed=7
    )
    assert [choice.index for choice in result.choices] == [0, 1, 2, 3]
    # Each prompt's tokens count once, however many choices it has.
    singles = [
        client.completions.create(model="tiny-gpt2", prompt=p, max_tokens=1).usage.prompt_tokens
        for p in ("The quick brown fox", "Once upon")
    ]
    assert result.usage.prompt_tokens == sum(singles)


def test_seed_makes_sampling_reproducible(client: openai.OpenAI) -> None:
    kwargs = {"model": "tiny-gpt2", "prompt": "Models are", "max_tokens": 8, "temperature": 1.5}
    first = client.completions.create(seed=1234, **kwargs).choices[0].text
    again = client.completions.create(seed=1234, **kwargs).choices[0].text
    assert first == again


def test_stop_sequence_ends_the_completion(client: openai.OpenAI) -> None:
    greedy = {
        "model": "tiny-gpt2",
        "prompt": "Once upon a time",
        "max_tokens": 12,
        "temperature": 0,
    }
    full = client.completions.create(**greedy).choices[0].text
    assert len(full) >= 3
    stop = full[2:4]  # a piece of the greedy continuation itself
    stopped = client.completions.create(stop=[stop], **greedy).choices[0]
    assert stopped.text == full[: full.index(stop)]
    assert stopped.finish_reason == "stop"


def test_streaming_matches_the_plain_completion(client: openai.OpenAI) -> None:
    greedy = {
        "model": "tiny-gpt2",
        "prompt": "Once upon a time",
        "max_tokens": 10,
        "temperature": 0,
    }
    plain = client.completions.create(**greedy)
    chunks = list(
        client.completions.create(stream=True, stream_options={"include_usage": True}, **greedy)
    )
    text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    assert text == plain.choices[0].text
    reasons = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert reasons == [plain.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_raw_stream_ends_with_done(fleet: dict) -> None:
    body = {"model": "tiny-gpt2", "prompt": "Hi", "max_tokens": 3, "stream": True}
    with requests.post(f"{fleet['url']}/v1/completions", json=body, stream=True, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == b"data: [DONE]"
    assert all(event.startswith(b"data: ") for event in events)


def test_completions_are_batched(fleet: dict) -> None:
    before = requests.get(f"{fleet['url']}/v2/models/tiny-gpt2/stats", timeout=30).json()
    body = {"model": "tiny-gpt2", "prompt": "Batch me", "max_tokens": 4, "temperature": 0}
    responses = post_many(f"{fleet['url']}/v1/completions", [body] * 8, concurrency=8)
    assert len({r.json()["choices"][0]["text"] for r in responses}) == 1
    after = requests.get(f"{fleet['url']}/v2/models/tiny-gpt2/stats", timeout=30).json()
    calls = after["model_stats"][0]["execution_count"] - before["model_stats"][0]["execution_count"]
    assert calls < 8


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embeddings(client: openai.OpenAI, fleet: dict, encoding: str) -> None:
    texts = ["A man is eating food.", "A man is eating a piece of bread."]
    result = client.embeddings.create(model="minilm", input=texts, encoding_format=encoding)
    if encoding == "base64":  # little-endian float32, as OpenAI sends it
        vectors = np.array(
            [np.frombuffer(base64.b64decode(item.embedding), dtype="<f4") for item in result.data]
        )
    else:
        vectors = np.array([item.embedding for item in result.data])
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert result.usage.prompt_tokens > 4
    tf_serving = requests.post(
        f"{fleet['url']}/v1/models/minilm:predict", json={"instances": texts}, timeout=60
    ).json()["predictions"]
    np.testing.assert_allclose(vectors, tf_serving, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("call", "status", "fragment"),
    [
        (lambda c: c.completions.create(model="minilm", prompt="x"), 404, "not found"),
        (lambda c: c.completions.create(model="nope", prompt="x"), 404, "known models: tiny-gpt2"),
        (lambda c: c.embeddings.create(model="tiny-gpt2", input="x"), 404, "feature-extraction"),
        (
            lambda c: c.completions.create(model="tiny-gpt2", prompt="x", max_tokens=0),
            400,
            "max_tokens",
        ),
        (
            lambda c: c.completions.create(model="tiny-gpt2", prompt="x", logprobs=2),
            400,
            "logprobs",
        ),
        (
            lambda c: c.completions.create(model="tiny-gpt2", prompt="x", max_tokens=5000),
            400,
            "max_tokens must be at most 1024",
        ),
        (
            lambda c: c.completions.create(model="tiny-gpt2", prompt=["a", "b"], stream=True),
            400,
            "one prompt",
        ),
    ],
)
def test_errors_in_openai_shape(client: openai.OpenAI, call, status: int, fragment: str) -> None:
    with pytest.raises(openai.APIStatusError) as error:
        result = call(client)
        list(result)  # a stream raises on iteration, if not before
    assert error.value.status_code == status
    assert fragment in error.value.message
