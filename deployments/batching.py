"""Pure helpers for dynamic batching: group compatible requests, concatenate, split back."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class BatchItem:
    """One request's (or one chunk's) prepared inputs waiting in the batch queue."""

    signature: str
    inputs: dict[str, np.ndarray]
    rows: int
    parameters: dict[str, Any] = field(default_factory=dict)
    group: str = ""  # items share a model call only if their groups are equal
    version: int = 0  # the model version that answers this item
    host: Any = None  # the ModelHost of the model that answers it (pools hold many)
    deadline: float | None = None  # time.time() past which nobody waits for it
    future: Any = None  # its result's future; cancelled once its caller gave up

    def given_up(self, now: float) -> bool:
        """Nobody waits for this item's answer any more."""
        cancelled = self.future is not None and self.future.cancelled()
        return cancelled or (self.deadline is not None and now >= self.deadline)


def parameters_key(parameters: dict[str, Any]) -> str:
    """The batching group of a request's parameters.

    Requests with equal parameters may share a model call. A seeded request gets a group of
    its own, so its random draws never depend on which other requests it was batched with.
    """
    if not parameters:
        return ""
    key = json.dumps(parameters, sort_keys=True, default=str)
    return f"{key}#{uuid.uuid4().hex}" if parameters.get("seed") is not None else key


def group_compatible(items: list[BatchItem]) -> list[list[int]]:
    """Indices of items that can share one model call (same signature, dtypes, row shapes)."""
    groups: dict[tuple, list[int]] = {}
    for index, item in enumerate(items):
        key = (
            item.signature,
            item.group,
            tuple(sorted((n, a.dtype.str, a.shape[1:]) for n, a in item.inputs.items())),
        )
        groups.setdefault(key, []).append(index)
    return list(groups.values())


def concat_inputs(items: list[BatchItem]) -> dict[str, np.ndarray]:
    """Stack the rows of compatible items along dimension 0."""
    if len(items) == 1:
        return items[0].inputs
    return {name: np.concatenate([item.inputs[name] for item in items]) for name in items[0].inputs}


def split_outputs(outputs: dict[str, np.ndarray], sizes: list[int]) -> list[dict[str, np.ndarray]]:
    """Cut batched outputs back into per-item outputs of ``sizes`` rows each."""
    bounds = np.cumsum(sizes)[:-1]
    parts = {name: np.split(array, bounds) for name, array in outputs.items()}
    return [{name: parts[name][i] for name in outputs} for i in range(len(sizes))]


def slice_rows(inputs: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    """Rows ``start:stop`` of every input (for requests larger than one batch)."""
    return {name: array[start:stop] for name, array in inputs.items()}


def concat_outputs(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Join the outputs of a request's chunks."""
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


class BatchStats:
    """Counts of model calls by batch size, in the shape of Triton's statistics extension."""

    def __init__(self) -> None:
        self.inference_count = 0
        self.execution_count = 0
        self.by_size: Counter[int] = Counter()

    def record(self, rows: int) -> None:
        """Count one model call of ``rows`` rows."""
        self.inference_count += rows
        self.execution_count += 1
        self.by_size[rows] += 1

    def to_json(self) -> dict:
        """``inference_count``, ``execution_count`` and ``batch_stats`` per batch size."""
        return {
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "batch_stats": [
                {"batch_size": size, "compute_infer": {"count": count}}
                for size, count in sorted(self.by_size.items())
            ],
        }
