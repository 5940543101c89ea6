"""Continuous batching for causal language models: the ``text-generation`` servable's engine.

Requests join the running batch at the next decoding step and leave it when done (end of
text, their token budget, their deadline, their caller gone), so a short request never waits
for a long one to finish. Each request samples with its own settings and its own seeded
``torch.Generator``, never torch's global one. The batch's key/value cache is one
``DynamicCache`` of growable layers (``deployments/kv_cache.py``) whose rows are left-padded
to a common length and used as slots: joining requests are prefilled together and written
into free slots, a finished request frees its slot at once, and the cache is compacted only
when free slots or unused leading columns make up half of it. Memory is bounded by
``max_tokens``: the live sequences' worst case (rows x the longest row at its end) never
exceeds it, and there are never more slots than ``max_rows``; requests past either wait,
and past ``max_queued`` waiting requests the model answers 503.

transformers' own continuous batching (``generate_batch``, ``init_continuous_batching``) is
not used: one manager samples all its requests one way (``do_sample`` is per manager) from
torch's global generator, so per-request seeds and greedy-beside-sampled cannot be served.

Scheduling state lives on the replica's event loop. Decoding steps run on the inference
thread, one at a time; a joining request's prefill runs on a thread of its own beside the
step in progress (when steps are long enough for that to pay), so its first token does not
wait for the step, and its row joins at the next one. The loop admits requests when they
come, when a prefill ends and between steps, and drops finished ones between steps.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from serve_app.errors import DeadlineExceeded, Overloaded, ServingError

logger = logging.getLogger("ray.serve")

# Leading columns no live row uses are cut out once they are half the cache and at least this.
SLACK_COLUMNS = 64
# The weight of the latest decoding step in the moving average of a step's duration.
STEP_TIME_WEIGHT = 0.2
# Why a sequence ended: its end-of-text token, or its token budget.
STOP = "stop"
LENGTH = "length"


@dataclass(frozen=True)
class Sampling:
    """One request's sampling: greedy at temperature 0, else nucleus sampling."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass(eq=False)
class Sequence:
    """One request's generation: its prompt, what it generated, and how it ended."""

    prompt: list[int]
    max_new_tokens: int
    sampling: Sampling
    deadline: float | None  # time.time(); past it the sequence ends with a 504
    generated: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    error: ServingError | None = None
    cancelled: bool = False
    # New tokens, one list per step; None once the sequence ended.
    tokens: asyncio.Queue = field(default_factory=asyncio.Queue)
    generator: Any = None  # its torch.Generator, made by its prefill
    sent: int = 0  # tokens put on ``tokens`` so far
    ended: bool = False  # its follower was told it ended

    def end(self) -> None:
        """Tell the follower the sequence ended (once)."""
        if not self.ended:
            self.ended = True
            self.tokens.put_nowait(None)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.error is not None or self.cancelled

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.generated)

    @property
    def remaining(self) -> int:
        return self.max_new_tokens - len(self.generated)


class DecodingEngine:
    """Schedules sequences over one causal LM: admission, prefill, one step at a time,
    delivery.

    Prefill runs on ``prefill_executor``. When that is another thread than the decoding
    one and the batch's steps take at least ``overlap_from_step_s``, a request's prompt is
    prefilled (and its first token sent) while the running batch decodes, rather than after
    the step in progress: its time to first token does not grow with the batch. The
    prefilled rows join the batch at the next step. Below that step time, waiting for the
    step costs less than two threads competing for the cores (and for the GIL), so prefills
    and steps take turns.
    """

    def __init__(
        self,
        model: Any,
        device: Any,
        executor: Executor,
        *,
        eos_ids: Iterable[int],
        pad_id: int,
        max_rows: int,
        max_tokens: int,
        max_queued: int | None,
        prefill_executor: Executor | None = None,
        overlap_from_step_s: float = 0.0,
    ) -> None:
        self.max_rows = max_rows
        self.max_tokens = max_tokens
        self.max_queued = max_queued
        self._executor = executor
        self._prefill_executor = prefill_executor or executor
        self._overlap_from_step_s = overlap_from_step_s
        self._step_s = 0.0  # a decoding step's recent duration (moving average)
        self._stepping = False  # a decoding step is running
        self._batch = RunningBatch(model, device, set(eos_ids), pad_id)
        self._waiting: collections.deque[Sequence] = collections.deque()
        # Admitted, not yet in the batch: being prefilled, or prefilled and waiting for a step.
        self._joining: list[Sequence] = []
        self._prefilling: asyncio.Future | None = None
        self._prefilled: list[Prefilled] = []
        # The sequences in the batch as the event loop last saw them (between steps).
        self._in_batch: list[Sequence] = []
        self._wake = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self.steps = 0  # decoding steps run (a statistic)

    def submit(
        self, prompt: list[int], max_new_tokens: int, sampling: Sampling, deadline: float | None
    ) -> Sequence:
        """Queue a sequence; it is prefilled as soon as there is room for it and joins the
        running batch at the next step. Call on the event loop. Raises 503 when
        ``max_queued`` sequences wait already."""
        if self.max_queued is not None and len(self._waiting) >= self.max_queued:
            raise Overloaded(
                f"{len(self._waiting)} generations are waiting for room in the running batch"
                f" (max_queued_requests {self.max_queued})"
            )
        sequence = Sequence(list(prompt), max_new_tokens, sampling, deadline)
        self._waiting.append(sequence)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run())
        self._prefill_next()
        return sequence

    async def follow(self, sequence: Sequence) -> AsyncIterator[list[int]]:
        """The sequence's new tokens as they are decoded; raises its error (504, 500) at the
        end. Stopping early (``aclose``) cancels it: its row is freed at the next step."""
        try:
            while (tokens := await sequence.tokens.get()) is not None:
                yield tokens
        finally:
            self.cancel(sequence)
        if sequence.error is not None:
            raise sequence.error

    def cancel(self, sequence: Sequence) -> None:
        """Nobody waits for the sequence any more: it leaves the batch at the next step."""
        if not sequence.done:
            sequence.cancelled = True

    @property
    def rows(self) -> int:
        """Sequences in the running batch now (a cancelled one leaves at the next step)."""
        return sum(not s.done for s in self._in_batch)

    def run_alone(self, prompt: list[int], max_new_tokens: int) -> list[int]:
        """Generate one greedy sequence on the calling thread (a load check, before the
        model takes traffic): prefill, decode, leave the batch empty."""
        sequence = Sequence(prompt, max_new_tokens, Sampling(), None)
        self._batch.decode([self._batch.prefill([sequence])], step=False)
        while not sequence.done:
            self._batch.decode([])
        self._batch.reset()
        return sequence.generated

    # --- prefill: as soon as a sequence fits ---------------------------------------------

    def _overlaps(self) -> bool:
        """Whether prefills run beside the decoding steps now (else between them)."""
        return (
            self._prefill_executor is not self._executor
            and self._step_s >= self._overlap_from_step_s
        )

    def _prefill_next(self) -> None:
        """Start prefilling the waiting sequences that fit, unless a prefill runs already
        or it would run beside a step when prefills take turns with steps. Call on the event
        loop."""
        self._expire(time.time())
        if self._prefilling is not None or (self._stepping and not self._overlaps()):
            return
        joining = self._admit()
        if not joining:
            return
        self._joining += joining
        self._prefilling = asyncio.get_running_loop().run_in_executor(
            self._prefill_executor, self._batch.prefill, joining
        )
        self._prefilling.add_done_callback(lambda done: self._on_prefilled(done, joining))

    def _on_prefilled(self, done: asyncio.Future, joining: list[Sequence]) -> None:
        """Send the prefilled sequences' first tokens; queue their rows for the next step."""
        self._prefilling = None
        try:
            self._prefilled.append(done.result())
        except asyncio.CancelledError:
            self._fail(joining, RuntimeError("cancelled"), "prefill")
        except Exception as exc:  # the joining sequences fail; the batch goes on
            self._fail(joining, exc, "prefill")
        self._joining = [s for s in self._joining if not (s.done and s in joining)]
        self._deliver(joining)
        self._wake.set()
        self._prefill_next()

    # --- the decoding loop -------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._schedule()
        except (Exception, asyncio.CancelledError) as exc:  # no follower waits for a dead loop
            everyone = [*self._waiting, *self._joining, *self._in_batch]
            self._fail(everyone, exc, "scheduling")
            for sequence in everyone:
                sequence.end()
            self._waiting.clear()
            self._joining, self._in_batch, self._prefilled = [], [], []
            self._batch.reset()
            if isinstance(exc, asyncio.CancelledError):
                raise

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting or self._joining or self._in_batch:
            self._prefill_next()
            while self._prefilling is not None and not self._overlaps():
                await asyncio.wait([self._prefilling])  # its rows join this step
            if not self._in_batch and not self._prefilled:
                if self._prefilling is None:
                    continue  # nothing to wait for: the loop's condition decides
                self._wake.clear()
                await self._wake.wait()  # for a prefill to finish (or a sequence to come)
                continue
            placing, self._prefilled = self._prefilled, []
            placed = [s for ready in placing for s in ready.sequences]
            self._joining = [s for s in self._joining if s not in placed]
            stepping = [*self._in_batch, *placed]
            started = time.perf_counter()
            self._stepping = True
            try:
                await loop.run_in_executor(self._executor, self._batch.decode, placing)
            except Exception as exc:  # a failed step leaves no consistent cache: all end
                self._fail(stepping, exc, "decoding")
                self._batch.reset()
            finally:
                self._stepping = False
            self._step_s += STEP_TIME_WEIGHT * (time.perf_counter() - started - self._step_s)
            self.steps += 1
            self._in_batch = self._batch.live
            self._deliver(stepping)

    def _expire(self, now: float) -> None:
        """End sequences past their deadline (those in the batch leave at the next step)."""
        for sequence in [*self._waiting, *self._joining, *self._in_batch]:
            if not sequence.done and sequence.deadline is not None and now >= sequence.deadline:
                sequence.error = DeadlineExceeded("the request's deadline passed during generation")
                sequence.end()

    def _admit(self) -> list[Sequence]:
        """The waiting sequences that fit now, oldest first (none overtakes a waiting one)."""
        running = [s for s in [*self._in_batch, *self._joining] if not s.done]
        joining: list[Sequence] = []
        while self._waiting:
            head = self._waiting[0]
            if head.done:  # cancelled or expired while waiting
                self._waiting.popleft()
                continue
            if (running or joining) and not self._fits([*running, *joining, head]):
                break
            joining.append(self._waiting.popleft())
        return joining

    def _fits(self, sequences: list[Sequence]) -> bool:
        """Whether these sequences fit the row limit and, at their worst (every row as long
        as the longest prompt so far plus the largest budget left), the token bound."""
        if len(sequences) > self.max_rows:
            return False
        longest = max(s.length for s in sequences)
        budget = max(s.remaining for s in sequences)
        return len(sequences) * (longest + budget) <= self.max_tokens

    def _deliver(self, sequences: list[Sequence]) -> None:
        """Hand each sequence's new tokens to its follower; end those that finished."""
        for sequence in sequences:
            if sequence.cancelled:
                continue
            new = sequence.generated[sequence.sent :]
            if new:
                sequence.sent += len(new)
                sequence.tokens.put_nowait(new)
            if sequence.finish_reason is not None or sequence.error is not None:
                sequence.end()

    @staticmethod
    def _fail(sequences: list[Sequence], exc: BaseException, step: str) -> None:
        logger.warning("generation failed in %s: %s: %s", step, type(exc).__name__, exc)
        for sequence in sequences:
            if not sequence.done:
                sequence.error = ServingError(
                    f"generation failed in {step}: {type(exc).__name__}: {exc}"
                )


@dataclass(eq=False)
class Prefilled:
    """Sequences prefilled together, for the batch to take in at its next step."""

    layers: list  # the prefill's cache layers, one row per joining sequence
    mask: Any  # [rows, columns]: 1 where a row has a prompt token (left-padded)
    first: Any  # [rows]: each row's first sampled token
    rows: list[tuple[int, Sequence]]  # (row, sequence) of those its first token left unfinished

    @property
    def sequences(self) -> list[Sequence]:
        return [sequence for _, sequence in self.rows]


class RunningBatch:
    """The rows being decoded and their key/value cache (inference thread only).

    Rows are slots: a finished sequence leaves its slot at once but its row stays in the cache
    (computed, its tokens ignored) until a joining sequence takes it over, so that neither
    leaving nor joining copies the whole cache. The cache is compacted (free slots and
    columns no sequence uses any more cut out) only once they make up half of it.
    """

    def __init__(self, model: Any, device: Any, eos_ids: set[int], pad_id: int) -> None:
        import torch

        self._torch = torch
        self._model = model
        self._device = device
        self._eos_ids = eos_ids
        self._pad_id = pad_id
        self.rows: list[Sequence | None] = []
        self.reset()

    @property
    def live(self) -> list[Sequence]:
        """The sequences in the batch (their slots, in order)."""
        return [s for s in self.rows if s is not None]

    def reset(self) -> None:
        """An empty batch."""
        self.rows = []
        self._cache: Any = None
        self._mask: Any = None  # [slots, columns]: 1 where a row has a token in the cache
        self._next: Any = None  # [slots]: each row's last sampled token, fed at the next step
        self._positions: Any = None  # [slots]: that token's position in its sequence

    def prefill(self, joining: list[Sequence]) -> Prefilled:
        """Prefill ``joining`` together and sample their first tokens. Touches no state of
        the batch, so it may run on another thread while the batch decodes."""
        with self._torch.inference_mode():  # the cache's tensors are inference tensors
            return self._prefill(joining)

    def decode(self, placing: list[Prefilled], *, step: bool = True) -> None:
        """Free finished rows, put the unfinished prefilled ones into free slots, and run
        one decoding step for every row (unless ``step`` is false); then free the rows that
        step finished."""
        with self._torch.inference_mode():
            self._free()
            for prefilled in placing:
                joined = [(row, s) for row, s in prefilled.rows if not s.done]
                if joined:
                    self._place(prefilled.layers, prefilled.mask, prefilled.first, joined)
            if step:
                self._decode()

    def _prefill(self, joining: list[Sequence]) -> Prefilled:
        torch = self._torch
        from transformers import DynamicCache

        width = max(len(s.prompt) for s in joining)
        ids = torch.full((len(joining), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(joining), width), dtype=torch.long)
        for row, sequence in enumerate(joining):
            ids[row, width - len(sequence.prompt) :] = torch.tensor(sequence.prompt)
            mask[row, width - len(sequence.prompt) :] = 1
            seed = sequence.sampling.seed
            generator = torch.Generator(device=self._device)
            sequence.generator = generator.manual_seed(
                secrets.randbits(63) if seed is None else seed
            )
        ids, mask = ids.to(self._device), mask.to(self._device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = self._model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1, :]
        first = self._sample(logits, joining)
        _check_layers(cache)
        tokens = first.tolist()
        rows = [(row, s) for row, s in enumerate(joining) if not self._record(s, tokens[row])]
        return Prefilled(cache.layers, mask, first, rows)

    def _decode(self) -> None:
        torch = self._torch
        if not self.rows:
            return
        mask = torch.cat([self._mask, self._mask.new_ones((len(self.rows), 1))], dim=1)
        logits = self._model(
            input_ids=self._next[:, None],
            attention_mask=mask,
            position_ids=self._positions[:, None],
            cache=self._cache,
            use_cache=True,
        ).logits[:, -1, :]
        self._next = self._sample(logits, self.rows)
        self._mask = mask
        self._positions = self._positions + 1
        for sequence, token in zip(self.rows, self._next.tolist()):
            if sequence is not None:
                self._record(sequence, token)
        self._free()  # finished rows leave their slots now

    def _record(self, sequence: Sequence, token: int) -> bool:
        """Add a sampled token to its sequence; whether the sequence finished."""
        if token in self._eos_ids:
            sequence.finish_reason = STOP
            return True
        sequence.generated.append(token)
        if sequence.remaining <= 0:
            sequence.finish_reason = LENGTH
            return True
        return False

    def _sample(self, logits: Any, sequences: list[Sequence | None]) -> Any:
        """Each row's next token: greedy (free slots too), or drawn with its own generator."""
        torch = self._torch
        chosen = logits.argmax(dim=-1)
        sampled = [
            row for row, s in enumerate(sequences) if s is not None and s.sampling.temperature > 0
        ]
        if not sampled:
            return chosen
        index = torch.tensor(sampled, device=logits.device)
        settings = [sequences[row].sampling for row in sampled]  # type: ignore[union-attr]
        temperature = torch.tensor([s.temperature for s in settings], device=logits.device)
        probs = torch.softmax(logits[index].float() / temperature[:, None], dim=-1)
        if any(s.top_p < 1 for s in settings):
            top_p = torch.tensor([s.top_p for s in settings], device=logits.device)
            ordered, order = probs.sort(dim=-1, descending=True)
            # Keep the most likely tokens until their mass reaches top_p (at least one).
            ordered[(ordered.cumsum(dim=-1) - ordered) >= top_p[:, None]] = 0
            probs = torch.zeros_like(probs).scatter(-1, order, ordered)
        for place, row in enumerate(sampled):
            generator = sequences[row].generator  # type: ignore[union-attr]
            chosen[row] = torch.multinomial(probs[place], 1, generator=generator)[0]
        return chosen

    def _place(
        self, layers: list, mask: Any, first: Any, joined: list[tuple[int, Sequence]]
    ) -> None:
        """Put prefilled rows (``joined``: row of ``layers`` and its sequence) into free
        slots, every row ending at the batch's last column: a prompt longer than the batch
        widens it (padding on the left), and slots are added only when none is free."""
        torch = self._torch
        from deployments.kv_cache import SlabLayer

        rows = torch.tensor([row for row, _ in joined], device=self._device)
        lengths = torch.tensor([len(s.prompt) for _, s in joined], device=self._device)
        if not self.rows:
            from transformers import DynamicCache

            self._cache = DynamicCache()
            self._cache.layers = [SlabLayer(lay.keys[rows], lay.values[rows]) for lay in layers]
            self._mask, self._next, self._positions = mask[rows], first[rows], lengths
            self.rows = [s for _, s in joined]
            return
        width = self._mask.shape[1]
        if mask.shape[1] > width:
            width = mask.shape[1]
            for layer in self._cache.layers:
                layer.widen(width)
            self._mask = _pad_left(self._mask, width, 1)
        free = [slot for slot, s in enumerate(self.rows) if s is None]
        if len(free) < len(joined):
            added = len(joined) - len(free)
            free += range(len(self.rows), len(self.rows) + added)
            for layer in self._cache.layers:
                layer.add_rows(added)
            # A new slot attends to its last column only (zeros) until it is taken.
            blank = self._mask.new_zeros((added, width))
            blank[:, -1] = 1
            self._mask = torch.cat([self._mask, blank])
            self._next = torch.cat([self._next, self._next.new_full((added,), self._pad_id)])
            self._positions = torch.cat([self._positions, self._positions.new_zeros(added)])
            self.rows += [None] * added
        slots = torch.tensor(free[: len(joined)], device=self._device)
        for mine, theirs in zip(self._cache.layers, layers):
            mine.place(slots, theirs.keys[rows], theirs.values[rows])
        self._mask[slots] = _pad_left(mask[rows], width, 1)
        self._next[slots] = first[rows]
        self._positions[slots] = lengths
        for slot, (_, sequence) in zip(free, joined):
            self.rows[slot] = sequence

    def _free(self) -> None:
        """Free the slots of finished (and cancelled, and expired) sequences; compact the
        cache once free slots, or columns no sequence uses, make up half of it."""
        self.rows = [None if s is None or s.done else s for s in self.rows]
        live = [slot for slot, s in enumerate(self.rows) if s is not None]
        if not live:
            self.reset()
            return
        index = self._torch.tensor(live, device=self._device)
        # Rows are left-padded: columns before the first one a live row uses are padding.
        start = int(self._mask[index].any(dim=0).int().argmax())
        width = self._mask.shape[1]
        if 2 * len(live) > len(self.rows) and 2 * start < max(width, 2 * SLACK_COLUMNS):
            return
        self._mask = self._mask[index, start:]
        self._next, self._positions = self._next[index], self._positions[index]
        self.rows = [self.rows[slot] for slot in live]
        for layer in self._cache.layers:
            layer.assign(layer.keys[index, :, start:], layer.values[index, :, start:])


def _pad_left(tensor: Any, width: int, dim: int) -> Any:
    """``tensor`` with zeros before its entries along ``dim`` up to ``width``."""
    import torch

    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _check_layers(cache: Any) -> None:
    """Only plain growing layers can be padded and cut this way (not sliding windows)."""
    from transformers.cache_utils import DynamicLayer

    for layer in cache.layers:
        if type(layer) is not DynamicLayer:
            raise TypeError(
                f"continuous batching needs plain key/value cache layers, not"
                f" {type(layer).__name__}: set transformers.generation_batching: request"
            )
