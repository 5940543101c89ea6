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
from pathlib import Path
from typing import Any

import numpy as np

from deployments.generation import (
    GenerationParameters,
    StopScanner,
    chat_messages,
    cut_at_stop,
    parse_generation_parameters,
)
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
from serve_app.errors import DeadlineExceeded, InvalidInput
from serve_app.request import EMBED, GENERATE, PREDICT, STREAM, PredictRequest

DEFAULT_MAX_NEW_TOKENS = 32
MAX_NEW_TOKENS_LIMIT = 1024
# A stream whose model produces no token for this long ends with an error event.
STREAM_GAP_S = 60.0
# What each task adds to predict (TF Serving and V2 requests on the task's signature).
TASK_CAPABILITIES = {"feature-extraction": (EMBED,), "text-generation": (GENERATE, STREAM)}


def _spec(name: str, dtype: np.dtype, shape: tuple[int, ...], **kw: Any) -> TensorSpec:
    return TensorSpec(name, dtype, shape, **kw)


class TransformersModel(Servable):
    """``feature-extraction`` (mean-pooled, L2-normalised sentence embeddings),
    ``text-classification`` (label and score) and ``text-generation``."""

    platform = "transformers"
    tasks = ("text-generation", "feature-extraction", "text-classification")
    task_required = True
    takes_dtype = True
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
        self._signatures = {DEFAULT_SIGNATURE: self._task_signature(config)}

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
        budget = _spec("max_new_tokens", INT32, (-1,), default=DEFAULT_MAX_NEW_TOKENS)
        outputs = {
            "generated_text": _spec("generated_text", STRING, (-1,)),
            "_completion": _spec("_completion", STRING, (-1,)),
            "_finish_reason": _spec("_finish_reason", STRING, (-1,)),
            "_prompt_tokens": _spec("_prompt_tokens", INT32, (-1,)),
            "_completion_tokens": _spec("_completion_tokens", INT32, (-1,)),
        }
        return Signature(DEFAULT_SIGNATURE, {**text, "max_new_tokens": budget}, outputs)

    def signatures(self) -> dict[str, Signature]:
        return self._signatures

    def warmup_inputs(self, signature: Signature) -> dict[str | None, np.ndarray] | None:
        row = super().warmup_inputs(signature)
        if row is not None and self.spec.task == "text-generation":
            row["max_new_tokens"] = np.array([1], dtype=np.int32)  # a check, not a workload
        return row

    def preprocesses(self, request: PredictRequest) -> bool:
        """Chat requests are rendered with the chat template, off the event loop."""
        return self.spec.task == "text-generation" and request.parameters.get("chat") is True

    def preprocess(self, request: PredictRequest) -> dict[str | None, np.ndarray]:
        """A chat request's inputs with each text (a JSON list of messages) rendered."""
        inputs = dict(request.inputs or {})
        key = "text" if "text" in inputs else None
        if key not in inputs:
            raise InvalidInput("a chat request needs its text input")
        texts = check_texts(np.asarray(inputs[key]).reshape(-1), "text")
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
        texts = check_texts(inputs["text"], "text")
        if self.spec.task != "text-generation":
            super().check_request(inputs, parameters)
            return
        parse_generation_parameters(parameters)
        budgets = inputs["max_new_tokens"]
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

    def infer(
        self,
        signature: str,
        inputs: dict[str, np.ndarray],
        parameters: dict[str, Any],
        stop: StopCheck | None = None,
    ) -> dict[str, np.ndarray]:
        texts = texts_of(inputs["text"])
        with self._torch.inference_mode():
            if self.spec.task == "feature-extraction":
                return self._embed(texts)
            if self.spec.task == "text-classification":
                return self._classify(texts)
            settings = parse_generation_parameters(parameters)
            return self._generate(texts, inputs["max_new_tokens"], settings, stop)

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
            "embeddings": torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().numpy(),
            "_token_count": encoded["attention_mask"].sum(dim=1).cpu().numpy().astype(np.int32),
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
            for name in ("_completion", "_finish_reason", "_prompt_tokens", "_completion_tokens")
        }
        # One generate call per distinct max_new_tokens: rows in a call share that setting.
        for budget in np.unique(budgets):
            rows = np.flatnonzero(budgets == budget).tolist()
            results = self._generate_rows([texts[i] for i in rows], int(budget), settings, stop)
            for row, result in zip(rows, results):
                for name, value in result.items():
                    columns[name][row] = value
        completions = np.array(columns["_completion"], dtype=object)
        return {
            "generated_text": np.array([t + c for t, c in zip(texts, completions)], dtype=object),
            "_completion": completions,
            "_finish_reason": np.array(columns["_finish_reason"], dtype=object),
            "_prompt_tokens": np.array(columns["_prompt_tokens"], dtype=np.int32),
            "_completion_tokens": np.array(columns["_completion_tokens"], dtype=np.int32),
        }

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
                length = len(self._tokenizer(text, add_special_tokens=False)["input_ids"])
            results.append(
                {
                    "_completion": text,
                    "_finish_reason": "stop" if stopped or length < budget else "length",
                    "_prompt_tokens": int(encoded["attention_mask"][row].sum()),
                    "_completion_tokens": length,
                }
            )
        return results

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
            "text": np.array([text], dtype=object),
            "max_new_tokens": np.array([max_new_tokens], dtype=np.int32),
        }
        loop = asyncio.get_running_loop()
        # Tokenizing is blocking work: on the inference thread, never on the event loop.
        await loop.run_in_executor(self._executor, self.check_request, inputs, parameters)
        settings = parse_generation_parameters(parameters)
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
                    yield {"text": delta}
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
            yield {"text": tail}
        if scanner.stopped:
            sent = cut_at_stop(scanner.text, settings.stop)[0]
            length = len(self._tokenizer(sent, add_special_tokens=False)["input_ids"])
        yield {
            "finish_reason": "stop" if scanner.stopped or length < max_new_tokens else "length",
            "prompt_tokens": int(encoded["attention_mask"].sum()),
            "completion_tokens": length,
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
