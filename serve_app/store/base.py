"""The model store contract: list a repository's versions, fetch one to a local directory.

A repository is ``<uri>/<version>/...`` with integer version directories, as in TF Serving;
a directory with no integer subdirectories is one unversioned model, version 1. Backends
(local paths now; ``gs://`` and a persistent cache later) all return local paths, so model
loaders never see where the bytes came from.
"""

from __future__ import annotations

import abc
from pathlib import Path

from serve_app.config import VersionPolicy
from serve_app.errors import ModelLoadError, NotFound


class ModelStore(abc.ABC):
    """Where one model's versions live."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    @abc.abstractmethod
    def list_versions(self) -> list[int]:
        """The available version numbers, ascending; ModelLoadError if the repository is missing."""

    @abc.abstractmethod
    def fetch(self, version: int) -> Path:
        """A local directory holding ``version``, ready for the framework to load."""

    def release(self, version: int) -> None:  # noqa: B027 - optional hook, no-op by default
        """The replica no longer serves ``version`` (a cache may now evict it)."""


def select_versions(available: list[int], policy: VersionPolicy, uri: str) -> list[int]:
    """Apply a TF Serving version policy to the available versions (ascending result)."""
    if not available:
        raise ModelLoadError(f"no model versions found at {uri}")
    ordered = sorted(set(available))
    if policy.all:
        return ordered
    if policy.latest is not None:
        return ordered[-policy.latest :]
    wanted = sorted(set(policy.specific or []))
    missing = [v for v in wanted if v not in ordered]
    if missing:
        raise NotFound(
            f"version(s) {missing} requested by version_policy not found at {uri}"
            f" (available: {ordered})"
        )
    return wanted
