"""OpenAI body validation and response shapes; generation parameters and stop sequences."""

import base64
import json

import numpy as np
import pytest

from deployments.generation import (
    StopScanner,
    chat_messages,
    cut_at_stop,
    parse_generation_parameters,
)
from serve_app.errors import InvalidInput, NotFound
from serve_app.protocols import openai


def test_completion_request_defaults_and_parameters() -> None:
    request = openai.parse(openai.CompletionRequest, {"model": "m", "prompt": "hi", "stop": "\n"})
    assert request.prompts == ["hi"] and request.max_tokens == 16 and request.n == 1
    assert request.generation_parameters() == {"temperature": 1.0, "top_p": 1.0, "stop": ["\n"]}
    seeded = openai.parse(openai.CompletionRequest, {"model": "m", "prompt": ["a", "b"], "seed": 3})
    assert seeded.generation_parameters()["seed"] == 3 and seeded.prompts == ["a", "b"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"model": "m", "prompt": "x", "max_tokens": 0}, "'max_tokens'"),
        ({"model": "m", "prompt": "x", "n": 99}, "'n'"),
        ({"model": "m", "prompt": "x", "logprobs": 1}, "'logprobs'"),
        ({"model": "m", "prompt": "x", "suffix": "y"}, "'suffix' is not supported"),
        ({"model": "m", "prompt": ""}, "prompt must not be empty"),
        ({"prompt": "x"}, "'model'"),
        (["x"], "JSON object"),
    ],
)
def test_bad_completion_bodies(body: object, fragment: str) -> None:
    with pytest.raises(InvalidInput) as error:
        openai.parse(openai.CompletionRequest, body)
    assert fragment in str(error.value)


def test_completion_response_counts_each_prompt_once() -> None:
    outputs = {
        "_completion": np.array(["a", "b", "c", "d"], dtype=object),
        "_finish_reason": np.array(["length", "stop", "length", "length"], dtype=object),
        "_prompt_tokens": np.array([3, 3, 5, 5]),
        "_completion_tokens": np.array([2, 1, 2, 2]),
    }
    body = openai.completion_response("m", outputs, n=2)
    assert [c["text"] for c in body["choices"]] == ["a", "b", "c", "d"]
    assert body["usage"] == {"prompt_tokens": 8, "completion_tokens": 7, "total_tokens": 15}
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")


def test_embedding_response_base64_is_little_endian_float32() -> None:
    vectors = np.array([[0.5, -1.0]], dtype=np.float32)
    body = openai.embedding_response("m", vectors, np.array([4]), "base64")
    raw = base64.b64decode(body["data"][0]["embedding"])
    assert np.frombuffer(raw, dtype="<f4").tolist() == [0.5, -1.0]
    assert body["usage"] == {"prompt_tokens": 4, "total_tokens": 4}


def test_error_body_and_stream_events() -> None:
    body = openai.error_body(NotFound("model 'x' not found"))
    assert body == {
        "error": {
            "message": "model 'x' not found",
            "type": "invalid_request_error",
            "param": None,
            "code": "model_not_found",
        }
    }
    stream = openai.CompletionStream("m", include_usage=True)
    assert stream.chunk("hi").startswith(b"data: {") and stream.chunk("hi").endswith(b"\n\n")
    assert stream.done() == b"data: [DONE]\n\n"


def test_generation_parameters() -> None:
    assert parse_generation_parameters({}).sampling is False
    params = parse_generation_parameters({"temperature": 0.7, "stop": "END", "seed": 1})
    assert params.sampling and params.stop == ["END"]
    with pytest.raises(InvalidInput, match="unknown parameter 'beam'"):
        parse_generation_parameters({"beam": 4})
    with pytest.raises(InvalidInput, match="parameter 'temperature'"):
        parse_generation_parameters({"temperature": 5})
    with pytest.raises(InvalidInput, match="must not be empty"):
        parse_generation_parameters({"stop": [""]})


def test_cut_at_the_earliest_stop() -> None:
    assert cut_at_stop("one two. three\n", ["\n", "."]) == ("one two", True)
    assert cut_at_stop("plain", ["x"]) == ("plain", False)


@pytest.mark.parametrize(
    ("pieces", "stop", "expected"),
    [
        (["hel", "lo wo", "rld"], [], "hello world"),
        (["one ST", "OP two"], ["STOP"], "one "),
        (["a", "b", "END", "c"], ["END"], "ab"),
        (["abc", "EN"], ["END"], "abcEN"),  # a partial stop at the end is still text
    ],
)
def test_stop_scanner_never_emits_part_of_a_stop(pieces: list, stop: list, expected: str) -> None:
    scanner = StopScanner(stop)
    sent = ""
    for piece in pieces:
        sent += scanner.feed(piece)
        assert not any(s in sent for s in stop)
        if scanner.stopped:
            break
    sent += scanner.finish()
    assert sent == expected


def test_chat_request_renders_to_a_conversation_with_chat_on() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
            },
        ],
        "max_completion_tokens": 5,
        "max_tokens": 9,
        "stop": "\n",
        "seed": 1,
    }
    request = openai.parse(openai.ChatCompletionRequest, body)
    assert json.loads(request.conversation()) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
    ]
    assert request.token_budget == 5  # max_completion_tokens wins over the older max_tokens
    assert request.generation_parameters() == {
        "temperature": 1.0,
        "top_p": 1.0,
        "chat": True,
        "stop": ["\n"],
        "seed": 1,
    }
    plain = openai.parse(openai.ChatCompletionRequest, {"model": "m", "messages": body["messages"]})
    assert plain.token_budget == 16


MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"n": 2}, "'n' is not supported (only 1 is accepted)"),
        ({"tools": [{"type": "function"}]}, "'tools' is not supported"),
        ({"logprobs": True}, "'logprobs' is not supported (only false is accepted)"),
        ({"response_format": {"type": "json_object"}}, "'response_format' is not supported"),
        ({"frequency_penalty": 0.5}, "'frequency_penalty' is not supported"),
        ({"messages": []}, "'messages'"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "'messages.0.role'"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages.0"),
        ({"max_completion_tokens": 0}, "'max_completion_tokens'"),
    ],
)
def test_unsupported_chat_fields_are_named(extra: dict, fragment: str) -> None:
    with pytest.raises(InvalidInput) as error:
        openai.parse(openai.ChatCompletionRequest, {"model": "m", "messages": MESSAGES, **extra})
    assert fragment in str(error.value)


def test_chat_response_and_stream_chunks() -> None:
    outputs = {
        "_completion": np.array(["Hello"], dtype=object),
        "_finish_reason": np.array(["stop"], dtype=object),
        "_prompt_tokens": np.array([4], dtype=np.int32),
        "_completion_tokens": np.array([2], dtype=np.int32),
    }
    body = openai.chat_response("m", outputs)
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    stream = openai.ChatStream("m", include_usage=True)
    events = [
        json.loads(line[len("data: ") :])
        for chunk in (stream.chunk("He"), stream.chunk("llo"), stream.chunk("", "stop"))
        for line in chunk.decode().split("\n\n")
        if line
    ]
    deltas = [event["choices"][0]["delta"] for event in events]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": "He"},
        {"content": "llo"},
        {},
    ]
    assert [e["choices"][0]["finish_reason"] for e in events] == [None, None, None, "stop"]
    assert {e["object"] for e in events} == {"chat.completion.chunk"}
    assert len({e["id"] for e in events}) == 1


@pytest.mark.parametrize(
    "conversation",
    ["not json", "[]", '{"role": "user"}', '[{"role": "user"}]', '[{"role": 1, "content": "x"}]'],
)
def test_chat_text_must_be_a_json_list_of_messages(conversation: str) -> None:
    with pytest.raises(InvalidInput, match="JSON list of messages"):
        chat_messages(conversation)
