"""What the ingress knows about each model deployment's health, from Serve's own status.

A model whose replicas failed to start has no replica to answer; a handle call would wait
for one forever. The ingress reads ``serve.status()`` (see ``FleetStatus``) and answers such
models' routes with 503 and the reason Serve recorded.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from ray import serve

from serve_app.errors import ModelUnavailable

logger = logging.getLogger("ray.serve")

# How often the status is read when nothing waits, and how long a request may wait on a
# model before its status is read at once (then every WATCH_INTERVAL_S while it waits).
POLL_INTERVAL_S = 10.0
STUCK_AFTER_S = 1.0
WATCH_INTERVAL_S = 1.0
_FAILED = {"DEPLOY_FAILED", "UNHEALTHY"}
# The load error's own message, without the traceback Serve wraps around it.
_LOAD_ERROR = re.compile(r"(?:ModelLoadError|NotFound|ConfigError): (.+)")
# Serve's status message for replicas that wait for resources (deployment_state.py).
_UNPLACED = re.compile(
    r"to be scheduled\..*Resources required for each replica: (?P<required>\{.*?\}),"
    r" total resources available: (?P<available>\{.*?\})",
    re.DOTALL,
)


@dataclass(frozen=True)
class ModelHealth:
    """One deployment's status as Serve reports it."""

    status: str
    running_replicas: int
    message: str


def summarize_failure(message: str) -> str:
    """The most specific line of a Serve status message, with no traceback or frames."""
    found = _LOAD_ERROR.findall(message)
    if found:
        return found[-1].strip()
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    last = lines[-1] if lines else "its replicas failed to start"
    return last if len(last) < 500 else last[:500] + "..."


class FleetStatus:
    """A view of the model deployments of one application, read from Serve's status.

    Reading ``serve.status()`` costs the ingress and the controller CPU, so it is read when
    a request needs it, not on a fast timer: once before the first request is routed, when
    a caller asks for a fresh view (readiness, a long wait), when some model has kept a
    request waiting for over ``STUCK_AFTER_S``, and otherwise every ``POLL_INTERVAL_S``.
    A model found failed while requests wait for it gets them answered with 503
    (``on_failed``) instead of leaving them to their deadline.
    """

    def __init__(
        self,
        app_name: str,
        model_names: list[str],
        stuck: Callable[[float], dict[str, float]] | None = None,
        on_failed: Callable[[str, ModelUnavailable], None] | None = None,
    ) -> None:
        self.app_name = app_name
        self.model_names = model_names
        self.health: dict[str, ModelHealth] = {}
        self._stuck = stuck or (lambda now: {})
        self._on_failed = on_failed
        self._read_at = float("-inf")
        self._reading: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None
        self._first_read: asyncio.Event | None = None

    async def ready(self) -> None:
        """Start watching on first use and wait for the first view of the fleet."""
        if self._first_read is None:
            self._first_read = asyncio.Event()
            loop = asyncio.get_running_loop()
            self._watcher = loop.create_task(self._watch_forever())
        if not self._first_read.is_set():
            await self.refresh(max_age=0.0)

    async def refresh(self, max_age: float) -> None:
        """Read Serve's status unless the view is younger than ``max_age`` seconds (one read
        at a time; concurrent callers share it)."""
        if time.monotonic() - self._read_at < max_age:
            return
        if self._reading is None or self._reading.done():
            self._reading = asyncio.get_running_loop().create_task(self._read_once())
        await asyncio.shield(self._reading)

    async def _read_once(self) -> None:
        try:
            self.health = await asyncio.to_thread(self._read)
        except Exception:  # the controller may be restarting; keep the last view
            logger.warning("could not read Serve status", exc_info=True)
        self._read_at = time.monotonic()
        if self._first_read is not None:
            self._first_read.set()

    async def _watch_forever(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            try:
                now = time.monotonic()
                stuck = {d: s for d, s in self._stuck(now).items() if s >= STUCK_AFTER_S}
                max_age = WATCH_INTERVAL_S if stuck else POLL_INTERVAL_S
                await self.refresh(max_age=max_age)
                for deployment in stuck:
                    error = self.failure(deployment)
                    if error is not None and self._on_failed is not None:
                        self._on_failed(deployment, error)
            except Exception:  # never let the watcher die
                logger.warning("fleet watch failed", exc_info=True)

    def _read(self) -> dict[str, ModelHealth]:
        app = serve.status().applications.get(self.app_name)
        if app is None:
            return {}
        result = {}
        for name, deployment in app.deployments.items():
            if name in self.model_names:
                running = deployment.replica_states.get("RUNNING", 0)
                result[name] = ModelHealth(
                    str(deployment.status.value), running, deployment.message or ""
                )
        return result

    def available(self, name: str) -> bool:
        """Whether ``name`` has a running replica (unknown counts as yes until Serve says)."""
        health = self.health.get(name)
        return health is None or health.running_replicas > 0

    def running_replicas(self, name: str) -> int:
        """Running replicas of ``name`` as last seen (1 until Serve says)."""
        health = self.health.get(name)
        return 1 if health is None else health.running_replicas

    def failure(self, name: str) -> ModelUnavailable | None:
        """The 503 for ``name`` if it has no replica that can answer and none is coming:
        Serve gave up on it, or its replicas cannot be placed on the cluster."""
        health = self.health.get(name)
        if health is None or health.running_replicas > 0:
            return None
        if health.status in _FAILED:
            reason = summarize_failure(health.message)
            return ModelUnavailable(f"model '{name}' is not available: {reason}")
        unplaced = _UNPLACED.search(health.message)
        if unplaced is not None:
            return ModelUnavailable(
                f"model '{name}' cannot be placed: each replica asks for"
                f" {unplaced['required']}, the cluster has {unplaced['available']} free"
                " (lower its resources, or add nodes)"
            )
        return None

    def check(self, name: str) -> None:
        """Raise ModelUnavailable (503) if ``name`` has no replica that can answer."""
        error = self.failure(name)
        if error is not None:
            raise error
