"""JSON merge patches: RFC 7386's semantics, as serve-overrides.yaml uses them."""

from __future__ import annotations

from serve_app.kuberay.merge_patch import apply_merge_patch


def test_apply_merge_patch_follows_rfc_7386() -> None:
    target = {"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]}
    patch = {"a": "z", "c": {"f": None}, "l": [3], "n": {"x": 1}}
    assert apply_merge_patch(target, patch) == {"a": "z", "c": {"d": "e"}, "l": [3], "n": {"x": 1}}
    assert target == {"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]}  # not modified
    assert apply_merge_patch({"a": 1}, ["x"]) == ["x"]
    assert apply_merge_patch("scalar", {"a": None, "b": 1}) == {"b": 1}
