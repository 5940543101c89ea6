"""What the ingress knows about each model deployment's health, from Serve's own status.

A model whose replicas failed to start has no replica to answer; a handle call would wait
for one forever. The ingress polls ``serve.status()`` in the background and answers such
models' routes at once with 503 and the reason Serve recorded.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

from ray import serve

from serve_app.errors import ModelUnavailable

logger = logging.getLogger("ray.serve")

POLL_INTERVAL_S = 1.0
_FAILED = {"DEPLOY_FAILED", "UNHEALTHY"}
# The load error's own message, without the traceback Serve wraps around it.
_LOAD_ERROR = re.compile(r"(?:ModelLoadError|NotFound|ConfigError): (.+)")


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
    """A periodically refreshed view of the model deployments of one application."""

    def __init__(self, app_name: str, model_names: list[str]) -> None:
        self.app_name = app_name
        self.model_names = model_names
        self.health: dict[str, ModelHealth] = {}
        self._task: asyncio.Task | None = None
        self._first_read: asyncio.Event | None = None

    async def ready(self) -> None:
        """Start polling on first use and wait for the first view of the fleet."""
        if self._task is None:
            self._first_read = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._poll_forever())
        assert self._first_read is not None
        await self._first_read.wait()

    async def _poll_forever(self) -> None:
        assert self._first_read is not None
        while True:
            try:
                self.health = await asyncio.to_thread(self._read)
            except Exception:  # the controller may be restarting; keep the last view
                logger.warning("could not read Serve status", exc_info=True)
            self._first_read.set()
            await asyncio.sleep(POLL_INTERVAL_S)

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

    def check(self, name: str) -> None:
        """Raise ModelUnavailable (503) if ``name`` has no replica that can answer."""
        health = self.health.get(name)
        if health is None or health.running_replicas > 0:
            return
        if health.status in _FAILED:
            reason = summarize_failure(health.message)
            raise ModelUnavailable(f"model '{name}' is not available: {reason}")
