"""The version table: availability first, labels, retries of failed versions."""

import random
from collections import Counter

import pytest

from deployments.versions import (
    AVAILABLE,
    END,
    LOADING,
    RETRY_FAILED_AFTER_S,
    ModelVersion,
    VersionTable,
)
from serve_app.errors import ModelUnavailable, NotFound


def table(**states: str) -> VersionTable:
    versions = VersionTable("m")
    for name, state in states.items():
        number = int(name.removeprefix("v"))
        versions.versions[number] = ModelVersion(number, state, servable=object())
    return versions


def test_a_new_version_replaces_the_old_only_once_available() -> None:
    versions = table(v1=AVAILABLE)
    assert versions.to_load([2], now=0) == [2]
    versions.versions[2] = ModelVersion(2, LOADING)
    assert versions.to_unload([2]) == []  # v1 keeps serving while v2 loads
    assert versions.default([2]).number == 1
    versions.versions[2].state = AVAILABLE
    assert versions.to_unload([2]) == [1]
    assert versions.default([2]).number == 2


def test_a_failed_version_never_replaces_a_working_one() -> None:
    versions = table(v1=AVAILABLE)
    versions.versions[2] = ModelVersion(2, END, error="boom", failed_at=100.0)
    assert versions.to_unload([2]) == []
    assert versions.default([2]).number == 1
    assert versions.to_load([2], now=100.0 + RETRY_FAILED_AFTER_S / 2) == []
    assert versions.to_load([2], now=100.0 + RETRY_FAILED_AFTER_S) == [2]
    versions.versions[2].attempts = 3
    assert versions.to_load([2], now=1e9) == []  # gave up until the config changes
    versions.forget_failures()
    assert versions.to_load([2], now=0) == [2]
    status = table(v1=AVAILABLE)
    status.versions[3] = ModelVersion(3, END, error="model 'm' version 3 failed to load: x")
    assert status.statuses() == [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        {
            "version": "3",
            "state": "END",
            "status": {
                "error_code": "UNKNOWN",
                "error_message": "model 'm' version 3 failed to load: x",
            },
        },
    ]


def test_resolve_by_number_and_label() -> None:
    versions = table(v1=AVAILABLE, v2=AVAILABLE, v3=LOADING)
    labels = {"stable": 1, "canary": 3}
    assert versions.resolve(None, None, labels, [2]).number == 2
    assert versions.resolve(1, None, labels, [2]).number == 1
    assert versions.resolve(None, "stable", labels, [2]).number == 1
    with pytest.raises(
        NotFound, match="label 'canary' points to version 3, which is not available"
    ):
        versions.resolve(None, "canary", labels, [2])
    with pytest.raises(NotFound, match="no version label 'beta' \\(labels: canary, stable\\)"):
        versions.resolve(None, "beta", labels, [2])
    with pytest.raises(NotFound, match="version 9 is not available"):
        versions.resolve(9, None, labels, [2])
    with pytest.raises(ModelUnavailable):
        table(v1=LOADING).default([1])


def test_a_traffic_split_draws_available_versions_by_weight() -> None:
    random.seed(7)
    versions = table(v1=AVAILABLE, v2=AVAILABLE)
    drawn = Counter(
        versions.resolve(None, None, {}, [2], {1: 90, 2: 10}).number for _ in range(5000)
    )
    # 500 expected for version 2; the standard deviation is about 21: allow 5 of them.
    assert abs(drawn[2] - 500) < 110 and drawn[1] + drawn[2] == 5000
    # Pinned requests and labels ignore the split.
    assert versions.resolve(2, None, {}, [2], {1: 100}).number == 2
    assert versions.resolve(None, "canary", {"canary": 2}, [2], {1: 100}).number == 2


def test_a_split_to_versions_that_are_not_available_falls_back_to_the_default() -> None:
    versions = table(v1=AVAILABLE, v2=END)
    assert versions.resolve(None, None, {}, [1, 2], {2: 100}).number == 1
    assert versions.resolve(None, None, {}, [1, 2], {1: 0, 2: 0, 3: 5}).number == 1
