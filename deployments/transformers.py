"""Hugging Face transformers models from ``save_pretrained`` directories, by task.

Weights load only from safetensors and never with ``trust_remote_code``: an artifact cannot
run code. torch and transformers are imported inside ``load``.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from deployments.batching import BatchItem
from deployments.decoding import DecodingEngine, Sampling
from deployments.generation import (
    Detokenizer,
    GenerationParameters,
    StopScanner,
    chat_messages,
    cut_at_stop,
    parse_generation_parameters,
)
from deployments.host import OFF_LOOP_CHECK_BYTES, input_bytes
from deployments.servable import DEFAULT_SIGNATURE, Servable, StopCheck
from deployments.signature import Signature, TensorSpec
from deployments.text import (
    FLOAT32,
    INT32,
    STRING,
    TEXT_INPUT,
    check_texts,
    cut_texts,
    embedding_signature,
    texts_of,
)
from serve_app.errors import DeadlineExceeded, InvalidInput, ServingError
from serve_app.request import EMBED, GENERATE, PREDICT, STREAM, PredictRequest
from serve_app.text_tasks import (
    COMPLETION,
    COMPLETION_TOKENS,
    EMBEDDINGS,
    FINISH_REASON,
    GENERATED_TEXT,
    MAX_NEW_TOKENS,
    MAX_NEW_TOKENS_LIMIT,
    PROMPT_TOKENS,
    STREAM_COMPLETION_TOKENS,
    STREAM_FINISH_REASON,
    STREAM_PROMPT_TOKENS,
    STREAM_TEXT,
    TEXT,
    TOKEN_COUNT,
)

DEFAULT_MAX_NEW_TOKENS = 32
# A stream whose model produces no token for this long ends with an error event.
STREAM_GAP_S = 60.0
# What each task adds to predict (TF Serving and V2 requests on the task's signature).
TASK_CAPABILITIES = {"feature-extraction": (EMBED,), "text-generation": (GENERATE, STREAM)}


# prefill: auto overlaps prefills with decoding steps that take at least this long: measured
# on 2 cores, gpt2-124m (steps 50-200 ms) gains (TTFT at c=8 2.1x -> 1.5x c=1's) while
# tiny-gpt2 (steps of a few ms) loses 14 % of its c=32 throughput (bench/NOTES.md).
PREFILL_OVERLAP_STEP_S = 0.02


class TransformersOptions(BaseModel):
    """``transformers:`` in a model's args (text-generation models)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # continuous: requests join and leave the running batch at each decoding step
    # (deployments/decoding.py); request: whole requests batched in one generate() call.
    generation_batching: Literal["continuous", "request"] = "continuous"
    # The bound on the running batch's key/value cache, in tokens (rows x longest row):
    # past it generations wait for room. A prompt plus its max_new_tokens must fit alone.
    max_tokens_in_flight: Annotated[int, Field(ge=64, le=16_777_216)] = 16_384
    # own_thread: a joining request's prompt is prefilled on a thread of its own while the
    # running batch decodes, so its first token does not wait for the step in progress;
    # between_steps: prefills and decoding steps take turns; auto: own_thread while a step
    # takes at least PREFILL_OVERLAP_STEP_S, else between_steps (a tiny model's steps are
    # shorter than the cost of two threads competing for the cores).
    prefill: Literal["auto", "own_thread", "between_steps"] = "auto"


def _spec(name: str, dtype: np.dtype, shape: tuple[int, ...], **kw: Any) -> TensorSpec:
    return TensorSpec(name, dtype, shape, **kw)


class TransformersModel(Servable):
    """``feature-extraction`` (mean-pooled, L2-normalised sentence embeddings),
    ``text-classification`` (label and score) and ``text-generation``."""

    platform = "transformers"
    tasks = ("text-generation", "feature-extraction", "text-classification")
    task_required = True
    takes_dtype = True
    options_model = TransformersOptions
    # torch's OpenMP threads belong to the thread that first computes: a model first run on
    # another thread computes about 1.5x slower on the inference thread ever after
    # (bench/NOTES.md, issue 14 #4).
    warm_up_on_inference_thread = True

    @classmethod
    def capabilities(cls, task: str | None, options: dict[str, Any]) -> frozenset[str]:
        return frozenset({PREDICT, *TASK_CAPABILITIES.get(task or "", ())})

    def load(self, path: Path) -> None:
        import torch
        import transformers

        from deployments.devices import setup_torch, torch_dtype

        self._torch = torch
        # The GPU Ray assigned (cuda:0, memory capped at the share) or the CPU, and the dtype.
        self._device, self.device_info = setup_torch(
            self.name, self.spec.resources, self.spec.dtype
        )
        common = {"local_files_only": True, "trust_remote_code": False}
        self._tokenizer = transformers.AutoTokenizer.from_pretrained(path, **common)
        model_class = {
            "feature-extraction": transformers.AutoModel,
            "text-classification": transformers.AutoModelForSequenceClassification,
            "text-generation": transformers.AutoModelForCausalLM,
        }[self.spec.task]
        model = model_class.from_pretrained(
            path, use_safetensors=True, dtype=torch_dtype(torch, self.spec.dtype), **common
        )
        self._model = model.to(self._device).eval()
        config = self._model.config
        positions = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", 512
        )
        self._max_length = min(positions, self._tokenizer.model_max_length or positions)
        if self.spec.task == "text-generation":
            # Batched generation pads on the left so every row continues from its last token.
            self._tokenizer.padding_side = "left"
            if self._tokenizer.pad_token is None:
                self._tokenizer.pad_token = self._tokenizer.eos_token
        self._engine = self._decoding_engine()
        self._signatures = {DEFAULT_SIGNATURE: self._task_signature(config)}

    def _decoding_engine(self) -> DecodingEngine | None:
        """The continuous-batching engine of a text-generation model (unless its options ask
        for request-level batching)."""
        options = self.parse_options(self.spec.options)
        if self.spec.task != "text-generation" or options.generation_batching != "continuous":
            return None
        eos = self._model.generation_config.eos_token_id
        eos_ids = {*(eos if isinstance(eos, list) else [eos]), self._tokenizer.eos_token_id}
        if options.prefill != "between_steps":
            self._prefill_thread = ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-prefill")
        return DecodingEngine(
            self._model,
            self._device,
            self._executor,
            eos_ids={i for i in eos_ids if i is not None},
            pad_id=self._tokenizer.pad_token_id,
            max_rows=self.spec.batching.max_batch_size,
            max_tokens=options.max_tokens_in_flight,
            max_queued=self.spec.max_queued_requests,
            prefill_executor=getattr(self, "_prefill_thread", None),
            overlap_from_step_s=PREFILL_OVERLAP_STEP_S if options.prefill == "auto" else 0.0,
        )

    def warm_up(self) -> None:
        """The usual check, then two tokens through the continuous-batching engine."""
        super().warm_up()
        if self._engine is not None:
            prompt = self._tokenizer("warm-up")["input_ids"]
            with self._torch.inference_mode():
                self._engine.run_alone(prompt, 2)

    def release(self) -> None:
        """The usual release, and the prefill thread ends once its last prefill returns."""
        prefill_thread = getattr(self, "_prefill_thread", None)
        if prefill_thread is not None:
            prefill_thread.shutdown(wait=False)
        super().release()

    def apply_batching(self, max_batch_size: int) -> None:
        """A new ``max_batch_size``: the running batch's row limit from its next step."""
        if getattr(self, "_engine", None) is not None:
            self._engine.max_rows = max_batch_size

    def _task_signature(self, config: Any) -> Signature:
        text = TEXT_INPUT
        if self.spec.task == "feature-extraction":
            return embedding_signature(config.hidden_size)
        if self.spec.task == "text-classification":
            outputs = {
                "label": _spec("label", STRING, (-1,)),
                "score": _spec("score", FLOAT32, (-1,)),
            }
            return Signature(DEFAULT_SIGNATURE, text, outputs)
        budget = _spec(MAX_NEW_TOKENS, INT32, (-1,), default=DEFAULT_MAX_NEW_TOKENS)
        outputs = {
            GENERATED_TEXT: _spec(GENERATED_TEXT, STRING, (-1,)),
            COMPLETION: _spec(COMPLETION, STRING, (-1,)),
            FINISH_REASON: _spec(FINISH_REASON, STRING, (-1,)),
            PROMPT_TOKENS: _spec(PROMPT_TOKENS, INT32, (-1,)),
            COMPLETION_TOKENS: _spec(COMPLETION_TOKENS, INT32, (-1,)),
        }
        return Signature(DEFAULT_SIGNATURE, {**text, MAX_NEW_TOKENS: budget}, outputs)

    def signatures(self) -> dict[str, Signature]:
        return self._signatures

    def warmup_inputs(self, signature: Signature) -> dict[str | None, np.ndarray] | None:
        row = super().warmup_inputs(signature)
        if row is not None and self.spec.task == "text-generation":
            row[MAX_NEW_TOKENS] = np.array([1], dtype=np.int32)  # a check, not a workload
        return row

    def preprocesses(self, request: PredictRequest) -> bool:
        """Chat requests are rendered with the chat template, off the event loop."""
        return self.spec.task == "text-generation" and request.parameters.get("chat") is True

    def preprocess(self, request: PredictRequest) -> dict[str | None, np.ndarray]:
        """A chat request's inputs with each text (a JSON list of messages) rendered."""
        inputs = dict(request.inputs or {})
        key = TEXT if TEXT in inputs else None
        if key not in inputs:
            raise InvalidInput("a chat request needs its text input")
        texts = check_texts(np.asarray(inputs[key]).reshape(-1), TEXT)
        inputs[key] = np.array([self.render_chat(text) for text in texts], dtype=object)
        return inputs

    def render_chat(self, conversation: str) -> str:
        """One conversation as the prompt the model's chat template makes of it."""
        if not getattr(self._tokenizer, "chat_template", None):
            raise InvalidInput(
                f"model '{self.name}' has no chat template: ship one as chat_template.jinja in"
                " its version directory (or in its tokenizer), or use /v1/completions"
            )
        messages = chat_messages(conversation)
        try:
            return self._tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # the template refused the conversation (e.g. role order)
            raise InvalidInput(
                f"model '{self.name}''s chat template refused the messages: {exc}"
            ) from None

    def check_request(self, inputs: dict[str, np.ndarray], parameters: dict[str, Any]) -> None:
        """Every text is valid Unicode (UTF-8 for bytes) before it can join a batch, where a
        text the tokenizer cannot take would fail its batch mates too; generation prompts
        must leave room for ``max_new_tokens`` in the model's context."""
        texts = check_texts(inputs[TEXT], TEXT)
        if self.spec.task != "text-generation":
            super().check_request(inputs, parameters)
            return
        parse_generation_parameters(parameters)
        budgets = inputs[MAX_NEW_TOKENS]
        if budgets.min() < 1 or budgets.max() > MAX_NEW_TOKENS_LIMIT:
            raise InvalidInput(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS_LIMIT}")
        for row, (text, cut) in enumerate(zip(texts, cut_texts(texts, self._max_length))):
            if len(text) > len(cut):  # refused before tokenizing megabytes
                raise InvalidInput(
                    f"text[{row}] has {len(text)} characters, more than the model's context of"
                    f" {self._max_length} tokens can hold"
                )
        # Each distinct prompt is tokenized once (completions repeat a prompt n times).
        distinct = list(dict.fromkeys(texts))
        counts = dict(zip(distinct, map(len, self._tokenizer(distinct)["input_ids"])))
        lengths = [counts[text] for text in texts]
        for row, (length, budget) in enumerate(zip(lengths, budgets.tolist())):
            if length == 0:  # generate() indexes the prompt's last token: IndexError, a 500
                raise InvalidInput(
                    f"text[{row}] has no tokens: generation needs a prompt of at least one token"
                )
            if length + budget > self._max_length:
                raise InvalidInput(
                    f"text[{row}] ({length} tokens) plus max_new_tokens ({budget}) exceeds"
                    f" the model's context of {self._max_length} tokens"
                )
            if self._engine is not None and length + budget > self._engine.max_tokens:
                raise InvalidInput(
                    f"text[{row}] ({length} tokens) plus max_new_tokens ({budget}) exceeds"
                    f" the model's transformers.max_tokens_in_flight"
                    f" ({self._engine.max_tokens})"
                )

    def infer(
        self,
        signature: str,
        inputs: dict[str, np.ndarray],
        parameters: dict[str, Any],
        stop: StopCheck | None = None,
    ) -> dict[str, np.ndarray]:
        texts = texts_of(inputs[TEXT])
        with self._torch.inference_mode():
            if self.spec.task == "feature-extraction":
                return self._embed(texts)
            if self.spec.task == "text-classification":
                return self._classify(texts)
            settings = parse_generation_parameters(parameters)
            return self._generate(texts, inputs[MAX_NEW_TOKENS], settings, stop)

    def _encode(self, texts: list[str]) -> Any:
        encoded = self._tokenizer(
            cut_texts(texts, self._max_length),
            padding=True,
            truncation=True,
            max_length=self._max_length,
            return_tensors="pt",
        )
        return encoded.to(self._device)

    def _embed(self, texts: list[str]) -> dict[str, np.ndarray]:
        torch = self._torch
        encoded = self._encode(texts)
        # Pooled in float32 whatever the model's dtype, then copied off the device.
        hidden = self._model(**encoded).last_hidden_state.float()
        mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return {
            EMBEDDINGS: torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().numpy(),
            TOKEN_COUNT: encoded["attention_mask"].sum(dim=1).cpu().numpy().astype(np.int32),
        }

    def _classify(self, texts: list[str]) -> dict[str, np.ndarray]:
        logits = self._model(**self._encode(texts)).logits
        scores, indices = logits.softmax(dim=-1).max(dim=-1)
        labels = self._model.config.id2label
        return {
            "label": np.array([labels[int(i)] for i in indices], dtype=object),
            "score": scores.float().cpu().numpy(),
        }

    def _generate(
        self,
        texts: list[str],
        budgets: np.ndarray,
        settings: GenerationParameters,
        stop: StopCheck | None = None,
    ) -> dict[str, np.ndarray]:
        columns: dict[str, list[Any]] = {
            name: [None] * len(texts)
            for name in (COMPLETION, FINISH_REASON, PROMPT_TOKENS, COMPLETION_TOKENS)
        }
        # One generate call per distinct max_new_tokens: rows in a call share that setting.
        for budget in np.unique(budgets):
            rows = np.flatnonzero(budgets == budget).tolist()
            results = self._generate_rows([texts[i] for i in rows], int(budget), settings, stop)
            for row, result in zip(rows, results):
                for name, value in result.items():
                    columns[name][row] = value
        return generation_outputs(
            texts,
            columns[COMPLETION],
            columns[FINISH_REASON],
            columns[PROMPT_TOKENS],
            columns[COMPLETION_TOKENS],
        )

    def _generate_kwargs(
        self, budget: int, settings: GenerationParameters, stop: StopCheck | None
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": budget,
            "do_sample": settings.sampling,
            "pad_token_id": self._tokenizer.pad_token_id,
        }
        if stop is not None:
            kwargs["stopping_criteria"] = stopping_criteria(self._torch, stop)
        if settings.sampling:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=0)
        return kwargs

    @contextlib.contextmanager
    def _seeded(self, seed: int | None) -> Iterator[None]:
        """For a seeded request, torch's generator forked and seeded for its call alone: the
        global generator that other requests sample from is restored afterwards."""
        if seed is None:
            yield
            return
        devices = [self._device] if str(self._device).startswith("cuda") else []
        with self._torch.random.fork_rng(devices=devices):
            self._torch.manual_seed(seed)
            yield

    def _generate_rows(
        self,
        texts: list[str],
        budget: int,
        settings: GenerationParameters,
        stop: StopCheck | None = None,
    ) -> list[dict[str, Any]]:
        encoded = self._encode(texts)
        width = encoded["input_ids"].shape[1]
        kwargs = self._generate_kwargs(budget, settings, stop)
        with self._seeded(settings.seed):
            generated = self._model.generate(**encoded, **kwargs)
        eos = self._tokenizer.eos_token_id
        results = []
        for row, ids in enumerate(generated[:, width:].tolist()):
            length = ids.index(eos) if eos in ids else len(ids)
            text = self._tokenizer.decode(ids[:length], skip_special_tokens=True)
            text, stopped = cut_at_stop(text, settings.stop)
            if stopped:
                length = self._tokens_in(text)
            results.append(
                {
                    COMPLETION: text,
                    FINISH_REASON: "stop" if stopped or length < budget else "length",
                    PROMPT_TOKENS: int(encoded["attention_mask"][row].sum()),
                    COMPLETION_TOKENS: length,
                }
            )
        return results

    def _tokens_in(self, text: str) -> int:
        """Tokens of generated text (a completion cut at its stop sequence)."""
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def submit(self, item: BatchItem) -> asyncio.Future | None:
        """Generation rows go to the continuous-batching engine, each a sequence of its own,
        not to the replica's batcher; the future gets the item's outputs (or its error)."""
        if self._engine is None:
            return None
        return asyncio.ensure_future(
            self._complete_rows(item.inputs, item.parameters, item.deadline)
        )

    async def _complete_rows(
        self, inputs: dict[str, np.ndarray], parameters: dict[str, Any], deadline: float | None
    ) -> dict[str, np.ndarray] | ServingError:
        """Every row's completion, generated side by side in the running batch."""
        settings = parse_generation_parameters(parameters)
        texts = texts_of(inputs[TEXT])
        budgets = inputs[MAX_NEW_TOKENS].tolist()
        try:
            async with asyncio.TaskGroup() as group:  # one failing row ends its siblings
                tasks = [
                    group.create_task(self._complete(text, int(budget), settings, deadline))
                    for text, budget in zip(texts, budgets)
                ]
        except ExceptionGroup as failed:
            error = failed.exceptions[0]
            if isinstance(error, ServingError):
                return error
            return ServingError(f"model '{self.name}' failed: {type(error).__name__}: {error}")
        rows = [task.result() for task in tasks]
        return generation_outputs(
            texts,
            [row[STREAM_TEXT] for row in rows],
            [row[STREAM_FINISH_REASON] for row in rows],
            [row[STREAM_PROMPT_TOKENS] for row in rows],
            [row[STREAM_COMPLETION_TOKENS] for row in rows],
        )

    async def _complete(
        self, text: str, max_new_tokens: int, settings: GenerationParameters, deadline: float | None
    ) -> dict[str, Any]:
        """One row's whole completion: its text and the stream's final item."""
        pieces = []
        async for item in self._stream_continuous(text, max_new_tokens, settings, deadline):
            if STREAM_TEXT in item:
                pieces.append(item[STREAM_TEXT])
            else:
                return {STREAM_TEXT: "".join(pieces), **item}
        raise AssertionError("a completion stream ends with its finish item")

    async def generate_stream(
        self,
        text: str,
        max_new_tokens: int,
        parameters: dict[str, Any],
        deadline: float | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream one completion as it is generated: ``{"text": delta}`` items, then a final
        ``{"finish_reason", "prompt_tokens", "completion_tokens"}`` item.

        Generation stops at the next token once the stream's consumer is gone (the client
        disconnected) or ``deadline`` (``time.time()``) passed; then the stream ends with
        a 504 error, not with silence.
        """
        if self.spec.task != "text-generation":
            raise InvalidInput(f"model '{self.name}' is not a text-generation model")
        if parameters.get("chat") is True:
            text = await asyncio.to_thread(self.render_chat, text)
        inputs = {
            TEXT: np.array([text], dtype=object),
            MAX_NEW_TOKENS: np.array([max_new_tokens], dtype=np.int32),
        }
        if self._engine is not None and input_bytes(inputs) <= OFF_LOOP_CHECK_BYTES:
            self.check_request(inputs, parameters)  # a short prompt: no wait for a step
        else:  # tokenizing is blocking work: on the inference thread, not the event loop
            await asyncio.get_running_loop().run_in_executor(
                self._executor, self.check_request, inputs, parameters
            )
        settings = parse_generation_parameters(parameters)
        stream = self._stream_continuous if self._engine is not None else self._stream_request_level
        async for item in stream(text, max_new_tokens, settings, deadline):
            yield item

    async def _stream_continuous(
        self, text: str, max_new_tokens: int, settings: GenerationParameters, deadline: float | None
    ) -> AsyncIterator[dict[str, Any]]:
        """One completion from the running batch, its text sent as its tokens are decoded.
        A stop sequence, an error or a departed consumer frees its row at the next step."""
        assert self._engine is not None
        # Prompts were checked to fit the model's context: tokenizing one is short work.
        prompt = self._tokenizer(text)["input_ids"]
        sampling = Sampling(settings.temperature, settings.top_p, settings.seed)
        sequence = self._engine.submit(prompt, max_new_tokens, sampling, deadline)
        text_of = Detokenizer(self._tokenizer)
        scanner = StopScanner(settings.stop)
        tokens = self._engine.follow(sequence)
        try:
            async for new in tokens:
                if delta := scanner.feed(text_of.add(new)):
                    yield {STREAM_TEXT: delta}
                if scanner.stopped:
                    break
        finally:
            await tokens.aclose()  # cancels the sequence unless it ended
        if not scanner.stopped:
            scanner.feed(text_of.finish())
            if tail := scanner.finish():
                yield {STREAM_TEXT: tail}
        length = len(sequence.generated)
        if scanner.stopped:
            sent = cut_at_stop(scanner.text, settings.stop)[0]
            length = self._tokens_in(sent)
        stopped = scanner.stopped or sequence.finish_reason == "stop"
        yield {
            STREAM_FINISH_REASON: "stop" if stopped else "length",
            STREAM_PROMPT_TOKENS: len(prompt),
            STREAM_COMPLETION_TOKENS: length,
        }

    async def _stream_request_level(
        self, text: str, max_new_tokens: int, settings: GenerationParameters, deadline: float | None
    ) -> AsyncIterator[dict[str, Any]]:
        """One completion streamed from a ``generate()`` call of its own (request-level
        batching, ``generation_batching: request``)."""
        loop = asyncio.get_running_loop()
        from transformers import TextIteratorStreamer

        gone = threading.Event()

        def stop() -> bool:
            return gone.is_set() or (deadline is not None and time.time() >= deadline)

        streamer = TextIteratorStreamer(self._tokenizer, skip_prompt=True, timeout=STREAM_GAP_S)
        encoded = await loop.run_in_executor(self._executor, self._encode, [text])
        kwargs = {**self._generate_kwargs(max_new_tokens, settings, stop), "streamer": streamer}

        def run() -> Any:
            with self._torch.inference_mode(), self._seeded(settings.seed):
                return self._model.generate(**encoded, **kwargs)

        generation = loop.run_in_executor(self._executor, run)
        scanner = StopScanner(settings.stop)
        pieces = iter(streamer)
        try:
            while not scanner.stopped:
                try:
                    piece = await asyncio.to_thread(next, pieces, None)
                except queue.Empty:
                    raise DeadlineExceeded(
                        f"model '{self.name}' produced no token for {STREAM_GAP_S:g} s"
                    ) from None
                if piece is None:
                    break
                if delta := scanner.feed(piece):
                    yield {STREAM_TEXT: delta}
            if scanner.stopped:
                gone.set()  # a stop sequence ends the generation at its next token
            generated = await generation
        finally:
            gone.set()  # a consumer that went away (or an error) stops the generation too
            generation.add_done_callback(_retrieve)  # its error, if nobody awaited it
        ids = generated[0, encoded["input_ids"].shape[1] :].tolist()
        eos = self._tokenizer.eos_token_id
        length = ids.index(eos) if eos in ids else len(ids)
        # Cut short (no end of text, fewer tokens than asked) with the deadline passed: the
        # deadline stopped it. One that ended by itself at that moment is answered.
        if not scanner.stopped and eos not in ids and len(ids) < max_new_tokens and stop():
            raise DeadlineExceeded(
                f"model '{self.name}' did not finish within the request's deadline"
            )
        if tail := scanner.finish():
            yield {STREAM_TEXT: tail}
        if scanner.stopped:
            sent = cut_at_stop(scanner.text, settings.stop)[0]
            length = self._tokens_in(sent)
        yield {
            STREAM_FINISH_REASON: (
                "stop" if scanner.stopped or length < max_new_tokens else "length"
            ),
            STREAM_PROMPT_TOKENS: int(encoded["attention_mask"].sum()),
            STREAM_COMPLETION_TOKENS: length,
        }


def generation_outputs(
    texts: list[str],
    completions: list[str],
    finish_reasons: list[str],
    prompt_tokens: list[int],
    completion_tokens: list[int],
) -> dict[str, np.ndarray]:
    """The text-generation signature's outputs for a batch of rows."""
    return {
        GENERATED_TEXT: np.array([t + c for t, c in zip(texts, completions)], dtype=object),
        COMPLETION: np.array(completions, dtype=object),
        FINISH_REASON: np.array(finish_reasons, dtype=object),
        PROMPT_TOKENS: np.array(prompt_tokens, dtype=np.int32),
        COMPLETION_TOKENS: np.array(completion_tokens, dtype=np.int32),
    }


def _retrieve(future: asyncio.Future) -> None:
    """Mark a future's error as seen: the stream that started it has ended already."""
    if not future.cancelled():
        future.exception()


def stopping_criteria(torch: Any, stop: StopCheck) -> Any:
    """A generation stopping criterion that ends every row once ``stop()`` is true."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopWhenNobodyWaits(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full((input_ids.shape[0],), stop(), dtype=torch.bool)

    return StoppingCriteriaList([StopWhenNobodyWaits()])
