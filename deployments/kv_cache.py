"""A key/value cache layer that grows in place, for the running batch of continuous batching.

transformers' ``DynamicLayer`` concatenates each step's keys and values onto the cache,
copying all of it at every decoding step: 37 % of a step's time at 32 rows of GPT-2 small
on CPU (bench/NOTES.md, "Continuous batching"). This layer keeps them in buffers with room
to grow and writes each step's token in place; the model reads views of the filled part.
"""

from __future__ import annotations

from typing import Any

from transformers.cache_utils import DynamicLayer

# Tokens of room a layer's buffers get beyond its length (and half the length again).
SLAB_ROOM = 64


class SlabLayer(DynamicLayer):
    """One layer's keys and values, ``[rows, heads, tokens, head_dim]``, in growable buffers."""

    def __init__(self, keys: Any, values: Any) -> None:
        super().__init__()
        self.assign(keys, values)

    def assign(self, keys: Any, values: Any, room: int = 0) -> None:
        """Hold these keys and values (copied), with room for ``room`` more tokens and then
        some (half the length again, at least ``SLAB_ROOM``), so that growing is rare."""
        length = keys.shape[-2]
        capacity = length + room + max(SLAB_ROOM, length // 2)
        shape = (*keys.shape[:-2], capacity, keys.shape[-1])
        self._key_slab = keys.new_empty(shape)
        self._value_slab = values.new_empty(shape)
        self._key_slab[..., :length, :] = keys
        self._value_slab[..., :length, :] = values
        self._show(length)
        self.device, self.is_initialized = keys.device, True

    def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> Any:
        """Write a step's keys and values after the filled part; return the filled part."""
        length, added = self.keys.shape[-2], key_states.shape[-2]
        if length + added > self._key_slab.shape[-2]:
            self.assign(self.keys, self.values, room=added)
        self._key_slab[..., length : length + added, :] = key_states
        self._value_slab[..., length : length + added, :] = value_states
        self._show(length + added)
        return self.keys, self.values

    def widen(self, width: int) -> None:
        """Pad every row on the left with zeros to ``width`` tokens (a copy)."""
        import torch

        missing = width - self.keys.shape[-2]
        shape = (*self.keys.shape[:-2], missing, self.keys.shape[-1])
        self.assign(
            torch.cat([self.keys.new_zeros(shape), self.keys], dim=-2),
            torch.cat([self.values.new_zeros(shape), self.values], dim=-2),
        )

    def add_rows(self, count: int) -> None:
        """``count`` more rows of zeros (a copy)."""
        import torch

        shape = (count, *self.keys.shape[1:])
        self.assign(
            torch.cat([self.keys, self.keys.new_zeros(shape)]),
            torch.cat([self.values, self.values.new_zeros(shape)]),
        )

    def place(self, slots: Any, keys: Any, values: Any) -> None:
        """Write rows (``[n, heads, tokens, head_dim]``) into ``slots``, each ending at the
        last filled column, zeros before: whatever the slot held before is gone."""
        length, tokens = self.keys.shape[-2], keys.shape[-2]
        for place, slot in enumerate(slots.tolist()):
            self._key_slab[slot, :, : length - tokens] = 0
            self._value_slab[slot, :, : length - tokens] = 0
            self._key_slab[slot, :, length - tokens : length] = keys[place]
            self._value_slab[slot, :, length - tokens : length] = values[place]

    def _show(self, length: int) -> None:
        self.keys = self._key_slab[..., :length, :]
        self.values = self._value_slab[..., :length, :]
