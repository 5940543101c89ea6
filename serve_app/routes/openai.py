"""OpenAI-compatible routes for transformers models: models, completions, chat completions,
embeddings."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from serve_app.call import CallContext
from serve_app.dataplane import DataPlane, ServedModel
from serve_app.errors import InvalidInput, ServingError
from serve_app.http import Reply, StreamReply, json_reply
from serve_app.jsonio import parse_json
from serve_app.protocols import openai
from serve_app.request import EMBED, GENERATE, STREAM, PredictRequest
from serve_app.rest import RestRequest, Route
from serve_app.text_tasks import (
    COMPLETION_OUTPUTS,
    EMBEDDINGS,
    MAX_NEW_TOKENS,
    MAX_NEW_TOKENS_LIMIT,
    STREAM_COMPLETION_TOKENS,
    STREAM_FINISH_REASON,
    STREAM_PROMPT_TOKENS,
    STREAM_TEXT,
    TEXT,
    TOKEN_COUNT,
)

logger = logging.getLogger("ray.serve")

_STARTED = int(time.time())


async def models(plane: DataPlane) -> Reply:
    names = await plane.model_names_that_can(GENERATE, EMBED)
    return json_reply(openai.models_list(names, _STARTED))


async def completions(plane: DataPlane, ctx: CallContext, body: bytes) -> Reply | StreamReply:
    plane.check_deadline(ctx)
    request = openai.parse(openai.CompletionRequest, parse_json(body))
    if request.max_tokens > MAX_NEW_TOKENS_LIMIT:
        raise InvalidInput(
            f"max_tokens must be at most {MAX_NEW_TOKENS_LIMIT}, got {request.max_tokens}"
        )
    plane.check_instances(len(request.prompts) * request.n)
    model = await plane.lookup(ctx, request.model, STREAM if request.stream else GENERATE)
    if request.stream:
        return await _stream(plane, ctx, model, request)
    rows = [prompt for prompt in request.prompts for _ in range(request.n)]
    predict_request = PredictRequest(
        {
            TEXT: np.array(rows, dtype=object),
            MAX_NEW_TOKENS: np.full(len(rows), request.max_tokens, dtype=np.int32),
        },
        parameters=request.generation_parameters(),
        outputs=list(COMPLETION_OUTPUTS),
    )
    _, outputs = await plane.infer(ctx, model, predict_request)
    return json_reply(openai.completion_response(request.model, outputs, request.n))


async def chat_completions(plane: DataPlane, ctx: CallContext, body: bytes) -> Reply | StreamReply:
    """``POST /v1/chat/completions``: the model renders the messages with its chat template
    (a 400 if it has none) and generates the assistant's answer."""
    request = await plane.decode(ctx, len(body), _chat_request, body)
    if request.token_budget > MAX_NEW_TOKENS_LIMIT:
        raise InvalidInput(
            f"max_completion_tokens must be at most {MAX_NEW_TOKENS_LIMIT},"
            f" got {request.token_budget}"
        )
    model = await plane.lookup(ctx, request.model, STREAM if request.stream else GENERATE)
    conversation = request.conversation()
    if request.stream:
        first, items = await plane.stream(
            ctx,
            model,
            conversation,
            request.token_budget,
            request.generation_parameters(),
        )
        include_usage = bool((request.stream_options or {}).get("include_usage"))
        return StreamReply(_events(openai.ChatStream(request.model, include_usage), first, items))
    predict_request = PredictRequest(
        {
            TEXT: np.array([conversation], dtype=object),
            MAX_NEW_TOKENS: np.array([request.token_budget], dtype=np.int32),
        },
        parameters=request.generation_parameters(),
        outputs=list(COMPLETION_OUTPUTS),
    )
    _, outputs = await plane.infer(ctx, model, predict_request)
    return json_reply(openai.chat_response(request.model, outputs))


def _chat_request(body: bytes) -> openai.ChatCompletionRequest:
    return openai.parse(openai.ChatCompletionRequest, parse_json(body))


async def _stream(
    plane: DataPlane, ctx: CallContext, model: ServedModel, request: openai.CompletionRequest
) -> StreamReply:
    if len(request.prompts) != 1 or request.n != 1:
        raise InvalidInput("stream: true takes one prompt and n = 1")
    first, items = await plane.stream(
        ctx,
        model,
        request.prompts[0],
        request.max_tokens,
        request.generation_parameters(),
    )
    include_usage = bool((request.stream_options or {}).get("include_usage"))
    stream = openai.CompletionStream(request.model, include_usage)
    return StreamReply(_events(stream, first, items))


async def embeddings(plane: DataPlane, ctx: CallContext, body: bytes) -> Reply:
    request = await plane.decode(ctx, len(body), _embedding_request, body)
    plane.check_instances(len(request.texts))
    predict_request = PredictRequest(
        {TEXT: np.array(request.texts, dtype=object)},
        outputs=[EMBEDDINGS, TOKEN_COUNT],
    )
    model = await plane.lookup(ctx, request.model, EMBED)
    _, outputs = await plane.infer(ctx, model, predict_request)
    return json_reply(
        openai.embedding_response(
            request.model, outputs[EMBEDDINGS], outputs[TOKEN_COUNT], request.encoding_format
        )
    )


def _embedding_request(body: bytes) -> openai.EmbeddingRequest:
    return openai.parse(openai.EmbeddingRequest, parse_json(body))


async def _events(
    stream: openai.CompletionStream, first: dict[str, Any], items: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[bytes]:
    """SSE chunks: text deltas, the finish reason, optional usage, then ``[DONE]``; a stream
    that fails (model error, replica gone, deadline) sends an error event before it."""
    item: dict[str, Any] | None = first
    try:
        while item is not None:
            if STREAM_TEXT in item:
                yield stream.chunk(item[STREAM_TEXT])
            else:
                yield stream.chunk("", item[STREAM_FINISH_REASON])
                if stream.include_usage:
                    yield stream.usage(item[STREAM_PROMPT_TOKENS], item[STREAM_COMPLETION_TOKENS])
            item = await anext(items, None)
    except ServingError as exc:
        yield stream.error(exc)
    except Exception as exc:  # e.g. the replica died mid-stream
        logger.warning("completion stream failed: %s: %s", type(exc).__name__, exc)
        yield stream.error(ServingError(f"the stream failed ({type(exc).__name__})"))
    yield stream.done()


async def _models(r: RestRequest) -> Reply:
    return await models(r.plane)


async def _completions(r: RestRequest) -> Reply | StreamReply:
    return await completions(r.plane, r.ctx, r.body)


async def _chat_completions(r: RestRequest) -> Reply | StreamReply:
    return await chat_completions(r.plane, r.ctx, r.body)


async def _embeddings(r: RestRequest) -> Reply:
    return await embeddings(r.plane, r.ctx, r.body)


# OpenAI-compatible routes; their errors in OpenAI's body.
ROUTES = [
    Route("POST", "/v1/embeddings", _embeddings, openai.error_body, "OpenAI embeddings"),
    # The client libraries some users have add a slash; it was always served.
    Route("POST", "/v1/embeddings/", _embeddings, openai.error_body, "", in_schema=False),
    Route("GET", "/v1/models", _models, openai.error_body, "OpenAI models list"),
    Route("POST", "/v1/completions", _completions, openai.error_body, "OpenAI completions"),
    Route(
        "POST",
        "/v1/chat/completions",
        _chat_completions,
        openai.error_body,
        "OpenAI chat completions (the model's chat template)",
    ),
]
