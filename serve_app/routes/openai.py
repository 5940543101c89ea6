"""OpenAI-compatible routes for transformers models: models, completions, embeddings."""

import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from serve_app.errors import InvalidInput, ServingError
from serve_app.http import JSONWithNaN
from serve_app.pool_catalog import MISS_REFRESH_S
from serve_app.protocols import openai
from serve_app.request import PredictRequest
from serve_app.routes.common import ModelRouter

GENERATION, EMBEDDING = "text-generation", "feature-extraction"
COMPLETION_OUTPUTS = ["_completion", "_finish_reason", "_prompt_tokens", "_completion_tokens"]
_STARTED = int(time.time())
# The most tokens one completion may ask for (the generation deployment's own bound).
MAX_TOKENS = 1024


class OpenAIRoutes(ModelRouter):
    """``/v1/models``, ``/v1/completions`` (with ``stream``) and ``/v1/embeddings``."""

    async def openai_models(self) -> Response:
        await self.pools.refresh(max_age=MISS_REFRESH_S)
        names = [n for n in self.model_names() if self.kind_of(n) in (GENERATION, EMBEDDING)]
        return JSONWithNaN(openai.models_list(names, _STARTED))

    async def openai_completions(self, request: Request) -> Response:
        body = openai.parse(openai.CompletionRequest, await self.json_body(request))
        if body.max_tokens > MAX_TOKENS:
            raise InvalidInput(f"max_tokens must be at most {MAX_TOKENS}, got {body.max_tokens}")
        self.check_instances(len(body.prompts) * body.n)
        handle = await self.model_handle(body.model, (GENERATION,))
        if body.stream:
            return await self._stream(handle, body)
        rows = [prompt for prompt in body.prompts for _ in range(body.n)]
        predict_request = PredictRequest(
            {
                "text": np.array(rows, dtype=object),
                "max_new_tokens": np.full(len(rows), body.max_tokens, dtype=np.int32),
            },
            parameters=body.generation_parameters(),
            outputs=COMPLETION_OUTPUTS,
        )
        outputs = await self.answer(body.model, handle.predict.remote(predict_request))
        return JSONWithNaN(openai.completion_response(body.model, outputs, body.n))

    async def _stream(self, handle: Any, body: openai.CompletionRequest) -> Response:
        if len(body.prompts) != 1 or body.n != 1:
            raise InvalidInput("stream: true takes one prompt and n = 1")
        items = handle.options(stream=True).generate_stream.remote(
            body.prompts[0], body.max_tokens, body.generation_parameters()
        )
        # The first item is awaited here, so a bad request still gets an HTTP error status.
        first = await self.answer(body.model, items.__anext__(), cancel=items.cancel)
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        stream = openai.CompletionStream(body.model, include_usage)
        return StreamingResponse(_events(stream, first, items), media_type="text/event-stream")

    async def openai_embeddings(self, request: Request) -> Response:
        body = openai.parse(openai.EmbeddingRequest, await self.json_body(request))
        self.check_instances(len(body.texts))
        handle = await self.model_handle(body.model, (EMBEDDING,))
        predict_request = PredictRequest(
            {"text": np.array(body.texts, dtype=object)},
            outputs=["embeddings", "_token_count"],
        )
        outputs = await self.answer(body.model, handle.predict.remote(predict_request))
        return JSONWithNaN(
            openai.embedding_response(
                body.model, outputs["embeddings"], outputs["_token_count"], body.encoding_format
            )
        )


async def _events(
    stream: openai.CompletionStream, first: dict[str, Any], items: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[bytes]:
    """SSE chunks: text deltas, the finish reason, optional usage, then ``[DONE]``."""
    item: dict[str, Any] | None = first
    try:
        while item is not None:
            if "text" in item:
                yield stream.chunk(item["text"])
            else:
                yield stream.chunk("", item["finish_reason"])
                if stream.include_usage:
                    yield stream.usage(item["prompt_tokens"], item["completion_tokens"])
            item = await anext(items, None)
    except ServingError as exc:
        yield stream.error(exc)
    yield stream.done()
