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


class ModelStore(abc.ABC):
    """Where one model's versions live."""

    # Whether the last fetch came from a local cache (True), was downloaded (False), or the
    # store has no cache (None).
    last_fetch_cached: bool | None = None

    def __init__(self, uri: str) -> None:
        self.uri = uri

    @abc.abstractmethod
    def list_versions(self) -> list[int]:
        """The available version numbers, ascending; ModelLoadError if the repository is missing."""

    @abc.abstractmethod
    def fetch(self, version: int) -> Path:
        """A local directory holding ``version``, ready for the framework to load."""

    @abc.abstractmethod
    def subdirectories(self) -> list[str]:
        """The names of the directories directly under the URI; used for model pools."""

    def release(self, version: int) -> None:  # noqa: B027 - optional hook, no-op by default
        """The replica no longer serves ``version`` (a cache may now evict it).

        Call it after unloading a version, and also when a version that ``fetch`` returned
        fails to load: a failed ``fetch`` releases on its own, a failed load cannot.
        """

    def discard(self, version: int) -> None:  # noqa: B027 - optional hook, no-op by default
        """``version`` failed to load: drop any local copy of it, so that the next ``fetch``
        reads the repository as it stands then (the copy may be of a half-uploaded version).

        Call it after ``release``. A store that reads its files in place has nothing to drop.
        """

    def notice_for(self, version: int) -> str:
        """A note for ``version``'s status as the store stands now ("" if nothing unusual),
        e.g. that it is served from the cache because the repository is unreachable."""
        return ""


def select_versions(available: list[int], policy: VersionPolicy) -> list[int]:
    """The versions a TF Serving version policy wants among ``available``, ascending.

    A pinned version that is not (yet) in the repository is left out: it is waited for.
    """
    ordered = sorted(set(available))
    if policy.all:
        return ordered
    if policy.latest is not None:
        return ordered[-policy.latest :]
    return [v for v in sorted(set(policy.specific or [])) if v in ordered]
