"""The versions of one model inside a replica, TF Serving style: states and what to change.

Availability first: a version stops serving only once a version the policy wants is
AVAILABLE, so a version that fails to load or warm up never replaces a working one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from serve_app.errors import ModelUnavailable, NotFound, UnknownLabel

LOADING, AVAILABLE, UNLOADING, END = "LOADING", "AVAILABLE", "UNLOADING", "END"
# A version that failed is tried again after this long (it may have been half-uploaded).
RETRY_FAILED_AFTER_S = 10.0
MAX_ATTEMPTS = 3


@dataclass
class ModelVersion:
    """One version's state; ``servable`` is set while it can answer."""

    number: int
    state: str = LOADING
    error: str = ""
    servable: Any = None
    in_flight: int = 0
    notice: str = ""  # e.g. "serving from cache": shown in the status, not an error
    failed_at: float = 0.0
    attempts: int = 1

    def status(self) -> dict[str, Any]:
        """TF Serving's ``model_version_status`` entry."""
        return {
            "version": str(self.number),
            "state": self.state,
            "status": {
                "error_code": "UNKNOWN" if self.error else "OK",
                "error_message": self.error or self.notice,
            },
        }


class VersionTable:
    """Every version a replica has seen, and the plan to reach the wanted ones."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.versions: dict[int, ModelVersion] = {}

    def available(self) -> list[int]:
        return sorted(v for v, mv in self.versions.items() if mv.state == AVAILABLE)

    def default(self, wanted: list[int]) -> ModelVersion:
        """The version that answers when a request names none: the newest wanted one that is
        AVAILABLE, else the newest AVAILABLE (while a wanted one loads or has failed)."""
        available = self.available()
        preferred = [v for v in available if v in wanted] or available
        if not preferred:
            raise ModelUnavailable(f"model '{self.model}' has no available version")
        return self.versions[preferred[-1]]

    def resolve(
        self,
        version: int | None,
        label: str | None,
        labels: dict[str, int],
        wanted: list[int],
        traffic: dict[int, float] | None = None,
    ) -> ModelVersion:
        """The version a request asks for (by number or label), or 404 naming what exists.

        A request that names neither goes to the default version, or with a ``traffic``
        split to one of its AVAILABLE versions, drawn by weight.
        """
        if label is not None:
            if label not in labels:
                known = ", ".join(sorted(labels)) or "none"
                raise UnknownLabel(
                    f"model '{self.model}' has no version label '{label}' (labels: {known})"
                )
            version = labels[label]
        if version is None:
            if traffic:
                chosen = self.draw(traffic)
                if chosen is not None:
                    return chosen
            return self.default(wanted)
        found = self.versions.get(version)
        if found is None or found.state != AVAILABLE:
            state = found.state if found else "not loaded"
            available = ", ".join(map(str, self.available())) or "none"
            via = (
                f"label '{label}' points to version {version}, which"
                if label
                else (f"model '{self.model}' version {version}")
            )
            raise NotFound(f"{via} is not available ({state}; available: {available})")
        return found

    def draw(self, traffic: dict[int, float]) -> ModelVersion | None:
        """One AVAILABLE version of the split, drawn by weight; None if none is AVAILABLE
        (a canary that failed to load gets no traffic: the default version answers)."""
        versions = [v for v, w in traffic.items() if w > 0 and v in self.versions]
        versions = [v for v in versions if self.versions[v].state == AVAILABLE]
        if not versions:
            return None
        weights = [traffic[v] for v in versions]
        return self.versions[random.choices(versions, weights)[0]]

    def to_load(self, wanted: list[int], now: float) -> list[int]:
        """Wanted versions not loaded yet, and failed ones due for another attempt."""
        return [v for v in wanted if v not in self.versions or self._retry(self.versions[v], now)]

    @staticmethod
    def _retry(version: ModelVersion, now: float) -> bool:
        if version.state != END:
            return False
        if not version.error:
            return True  # unloaded earlier, wanted again
        due = now - version.failed_at >= RETRY_FAILED_AFTER_S
        return due and version.attempts < MAX_ATTEMPTS

    def to_unload(self, wanted: list[int]) -> list[int]:
        """AVAILABLE versions no longer wanted, once a wanted version is AVAILABLE."""
        if not any(self.versions[v].state == AVAILABLE for v in wanted if v in self.versions):
            return []
        return [v for v in self.available() if v not in wanted]

    def forget_failures(self) -> None:
        """Let failed versions be tried again (after a config change)."""
        for number in [v for v, mv in self.versions.items() if mv.error]:
            del self.versions[number]

    def statuses(self, version: int | None = None) -> list[dict[str, Any]]:
        """Status entries, oldest version first; one version's if ``version`` is given."""
        chosen = sorted(self.versions) if version is None else [version]
        return [self.versions[v].status() for v in chosen if v in self.versions]
