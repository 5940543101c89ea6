"""``POST /v1/chat/completions`` with the real `openai` client: the model's chat template,
plain and streamed answers, stop sequences, refused options, a model without a template,
and per-request seeds that leave other requests' sampling alone."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import requests

from serve_app.examples import build_tiny_gpt2
from tests.integration.conftest import deploy_and_wait, undeploy

pytestmark = pytest.mark.integration

MESSAGES = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Once upon a time"},
]
# What tiny-gpt2's chat template (serve_app/examples.py) makes of MESSAGES.
RENDERED = "system: You answer briefly.\nuser: Once upon a time\nassistant:"
GREEDY = {"model": "tiny-gpt2", "messages": MESSAGES, "temperature": 0}


@pytest.fixture(scope="module")
def client(fleet: dict) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{fleet['url']}/v1", api_key="unused", max_retries=0)


def test_chat_answers_what_the_template_renders(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(max_completion_tokens=6, **GREEDY)
    choice = chat.choices[0]
    assert chat.object == "chat.completion" and chat.model == "tiny-gpt2"
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    # The same prompt through /v1/completions: the chat route rendered MESSAGES to it.
    plain = client.completions.create(
        model="tiny-gpt2", prompt=RENDERED, max_tokens=6, temperature=0
    )
    assert choice.message.content == plain.choices[0].text
    assert chat.usage.prompt_tokens == plain.usage.prompt_tokens
    assert chat.usage.completion_tokens == plain.usage.completion_tokens
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens


def test_max_tokens_is_the_older_name_of_max_completion_tokens(client: openai.OpenAI) -> None:
    old = client.chat.completions.create(max_tokens=3, **GREEDY)
    new = client.chat.completions.create(max_completion_tokens=3, **GREEDY)
    assert old.choices[0].message.content == new.choices[0].message.content
    assert old.usage.completion_tokens <= 3


def test_streamed_chat_matches_the_plain_answer(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(max_completion_tokens=10, **GREEDY)
    chunks = list(
        client.chat.completions.create(
            max_completion_tokens=10,
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        )
    )
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    reasons = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert reasons == [plain.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_a_stop_sequence_ends_the_answer(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(max_completion_tokens=12, **GREEDY)
    content = full.choices[0].message.content
    assert len(content) >= 4
    stop = content[2:4]  # a piece of the greedy answer itself
    stopped = client.chat.completions.create(max_completion_tokens=12, stop=[stop], **GREEDY)
    assert stopped.choices[0].message.content == content[: content.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"n": 2}, "'n' is not supported"),
        ({"logprobs": True}, "'logprobs' is not supported"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
            "'tools' is not supported",
        ),
        ({"response_format": {"type": "json_object"}}, "'response_format' is not supported"),
        ({"max_completion_tokens": 5000}, "max_completion_tokens must be at most 1024"),
    ],
)
def test_unsupported_options_are_refused_by_name(
    client: openai.OpenAI, options: dict, fragment: str
) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(**GREEDY, **options)
    assert fragment in error.value.message


def test_chat_with_a_model_that_is_not_generative_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="minilm", messages=MESSAGES)


def test_a_model_without_a_chat_template_answers_400(serve_url: str, tmp_path: Path) -> None:
    uri = build_tiny_gpt2(tmp_path, name="plain-gpt2", chat_template=False)
    args = {
        "models": [
            {
                "name": "plain-gpt2",
                "framework": "transformers",
                "task": "text-generation",
                "uri": str(uri),
                "resources": {"num_cpus": 0.1},
            }
        ]
    }
    deploy_and_wait("nochat", args)
    try:
        client = openai.OpenAI(base_url=f"{serve_url}/nochat/v1", api_key="unused", max_retries=0)
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as error:
                result = client.chat.completions.create(
                    model="plain-gpt2", messages=MESSAGES, stream=stream
                )
                list(result)  # a stream raises on iteration, if not before
            assert "has no chat template" in error.value.message
            assert "chat_template.jinja" in error.value.message
        # Its completions still work: only chat needs a template.
        assert client.completions.create(model="plain-gpt2", prompt="Hi", max_tokens=2).choices
    finally:
        undeploy("nochat")


def test_seeded_answers_are_reproducible_under_concurrency(client: openai.OpenAI) -> None:
    sampled = {"model": "tiny-gpt2", "messages": MESSAGES, "temperature": 1.5, "top_p": 1.0}

    def seeded(_: int) -> str:
        chat = client.chat.completions.create(max_completion_tokens=8, seed=99, **sampled)
        return chat.choices[0].message.content

    def unseeded(_: int) -> str:
        chat = client.chat.completions.create(max_completion_tokens=8, **sampled)
        return chat.choices[0].message.content

    alone = seeded(0)
    with ThreadPoolExecutor(8) as pool:
        mixed = [pool.submit(seeded if i % 2 else unseeded, i) for i in range(16)]
        answers = [future.result() for future in mixed]
    assert all(answer == alone for answer in answers[1::2])


def test_a_seeded_request_leaves_later_unseeded_sampling_alone(fleet: dict) -> None:
    """A seed must not reseed torch's global generator: before, every unseeded request that
    followed the same seeded one drew the same "random" tokens."""
    url = f"{fleet['url']}/v1/completions"
    body = {"model": "tiny-gpt2", "prompt": "Models are", "max_tokens": 16, "temperature": 2.0}
    unseeded = []
    for _ in range(3):
        assert requests.post(url, json={**body, "seed": 5}, timeout=60).ok
        answer = requests.post(url, json=body, timeout=60)
        assert answer.ok, answer.text
        unseeded.append(answer.json()["choices"][0]["text"])
    assert len(set(unseeded)) > 1, unseeded


def test_v2_infer_chats_with_the_chat_parameter(client: openai.OpenAI, fleet: dict) -> None:
    chat = client.chat.completions.create(max_completion_tokens=6, **GREEDY)
    body = {
        "inputs": [
            {"name": "text", "shape": [1], "datatype": "BYTES", "data": [json.dumps(MESSAGES)]},
            {"name": "max_new_tokens", "shape": [1], "datatype": "INT32", "data": [6]},
        ],
        "parameters": {"chat": True, "temperature": 0},
    }
    answer = requests.post(f"{fleet['url']}/v2/models/tiny-gpt2/infer", json=body, timeout=60)
    assert answer.ok, answer.text
    outputs = {output["name"]: output["data"] for output in answer.json()["outputs"]}
    assert outputs["generated_text"] == [RENDERED + chat.choices[0].message.content]
