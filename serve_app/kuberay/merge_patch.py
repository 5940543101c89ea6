"""JSON merge patches (RFC 7386): applying one, and computing the one ``kubectl apply`` sends."""

from __future__ import annotations

import copy
from typing import Any


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """``target`` with ``patch`` merged in: mappings merge key by key, ``None`` deletes a key,
    anything else (lists included) replaces. Neither argument is modified."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


def three_way_merge_patch(
    last_applied: dict[str, Any], live: dict[str, Any], desired: dict[str, Any]
) -> dict[str, Any]:
    """The merge patch that turns ``live`` into ``desired``, as ``kubectl apply`` computes it.

    A key is deleted only if the previous apply (``last_applied``) set it and ``desired`` no
    longer has it: fields that the server or other actors own (defaults, ``uid``, ``status``)
    are left alone. Empty when nothing needs to change.
    """
    patch: dict[str, Any] = {}
    for key in last_applied.keys() - desired.keys():
        if key in live:
            patch[key] = None
    for key, value in desired.items():
        old = live.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            before = last_applied.get(key)
            nested = three_way_merge_patch(before if isinstance(before, dict) else {}, old, value)
            if nested:
                patch[key] = nested
        elif key not in live or old != value:
            patch[key] = copy.deepcopy(value)
    return patch
