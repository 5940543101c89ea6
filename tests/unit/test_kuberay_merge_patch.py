"""JSON merge patches: RFC 7386's semantics, and the three-way patch ``kubectl apply`` sends."""

from __future__ import annotations

from serve_app.kuberay.merge_patch import apply_merge_patch, three_way_merge_patch


def test_apply_merge_patch_follows_rfc_7386() -> None:
    target = {"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]}
    patch = {"a": "z", "c": {"f": None}, "l": [3], "n": {"x": 1}}
    assert apply_merge_patch(target, patch) == {"a": "z", "c": {"d": "e"}, "l": [3], "n": {"x": 1}}
    assert target == {"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]}  # not modified
    assert apply_merge_patch({"a": 1}, ["x"]) == ["x"]
    assert apply_merge_patch("scalar", {"a": None, "b": 1}) == {"b": 1}


def test_three_way_is_empty_when_live_already_matches() -> None:
    desired = {"spec": {"a": 1, "b": {"c": [1, 2]}}}
    live = {"spec": {"a": 1, "b": {"c": [1, 2]}, "defaulted": True}, "status": {"x": 1}}
    assert three_way_merge_patch(desired, live, desired) == {}


def test_three_way_deletes_only_what_the_last_apply_set() -> None:
    last = {"spec": {"a": 1, "gone": {"x": 1}, "nested": {"keep": 1, "drop": 2}}}
    live = {"spec": {"a": 1, "gone": {"x": 1}, "nested": {"keep": 1, "drop": 2}, "theirs": 3}}
    desired = {"spec": {"a": 2, "nested": {"keep": 1}}}
    patch = three_way_merge_patch(last, live, desired)
    assert patch == {"spec": {"a": 2, "gone": None, "nested": {"drop": None}}}
    assert apply_merge_patch(live, patch) == {"spec": {"a": 2, "nested": {"keep": 1}, "theirs": 3}}


def test_three_way_replaces_lists_and_adds_new_keys() -> None:
    live = {"spec": {"groups": [{"name": "cpu"}, {"name": "gpu"}]}}
    desired = {"spec": {"groups": [{"name": "cpu"}], "new": {"k": "v"}}}
    assert three_way_merge_patch({}, live, desired) == {
        "spec": {"groups": [{"name": "cpu"}], "new": {"k": "v"}}
    }


def test_three_way_skips_deleting_what_is_already_gone() -> None:
    assert three_way_merge_patch({"a": 1, "b": 2}, {"b": 2}, {"b": 2}) == {}
