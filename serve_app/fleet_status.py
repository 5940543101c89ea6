"""What the ingress knows of the fleet, from Serve's own view of its applications.

Two things come from one read of Serve's instance details (``FleetStatus``):

- each model deployment's health: a model whose replicas failed to start has no replica to
  answer, and a handle call would wait for one forever, so its routes answer 503 with the
  reason Serve recorded instead;
- the model and pool *applications* beside the ingress's own (one application per model,
  built by ``serve_app.app:build_model`` / ``build_pool``, named after the model): the
  ingress serves whatever is deployed, so adding, changing or removing one model's
  application touches no other application.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray import serve

from serve_app.builders import MODEL_BUILDER, POOL_BUILDER
from serve_app.errors import ModelUnavailable
from serve_app.placement import Capacity, never_placeable, parse_resources, read_capacity
from serve_app.shared_read import SharedRead

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
    min_replicas: int = 1  # 0: it scales to zero and answers after a cold start
    replicas: tuple[dict[str, Any], ...] = ()  # replica id, state, pid, node, start time


@dataclass(frozen=True)
class FoundApp:
    """A model or pool application deployed beside the ingress."""

    name: str  # the application's, which is the model's (or pool's) name
    builder: str  # MODEL_BUILDER or POOL_BUILDER
    args: dict[str, Any]  # as deployed (serve_config.yaml, serve deploy, serveConfigV2)


def summarize_failure(message: str) -> str:
    """The most specific line of a Serve status message, with no traceback or frames."""
    found = _LOAD_ERROR.findall(message)
    if found:
        return found[-1].strip()
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    last = lines[-1] if lines else "its replicas failed to start"
    return last if len(last) < 500 else last[:500] + "..."


class FleetStatus:
    """A view of the fleet's deployments and applications, read from Serve.

    Reading Serve's details costs the ingress and the controller CPU, so they are read
    when a request needs them, not on a fast timer: once before the first request is
    routed, when a caller asks for a fresh view (readiness, a model name not known yet, a
    long wait), when some model has kept a request waiting for over ``STUCK_AFTER_S``, and
    otherwise every ``POLL_INTERVAL_S``. A model found failed while requests wait for it
    gets them answered with 503 (``on_failed``) instead of leaving them to their deadline.
    """

    def __init__(
        self,
        app_name: str,
        model_names: list[str],
        stuck: Callable[[float], dict[str, float]] | None = None,
        on_failed: Callable[[str, ModelUnavailable], None] | None = None,
        on_apps: Callable[[dict[str, FoundApp]], None] | None = None,
    ) -> None:
        self.app_name = app_name
        self.static_names = list(model_names)  # deployments of the ingress's own application
        self.health: dict[str, ModelHealth] = {}
        self.apps: dict[str, FoundApp] = {}
        self._stuck = stuck or (lambda now: {})
        self._on_failed = on_failed
        self._on_apps = on_apps
        self._reading = SharedRead(self._read_once)
        self._watcher: asyncio.Task | None = None
        self._first_read: asyncio.Event | None = None
        # What the cluster can grow to; read only while some model waits for resources.
        self.capacity: Capacity | None = None

    @property
    def model_names(self) -> list[str]:
        """Every deployment the ingress routes to: its own application's and the others'."""
        return [*self.static_names, *(n for n in self.apps if n not in self.static_names)]

    async def ready(self, timeout: float | None = None) -> bool:
        """Start watching on first use and wait for the first view of the fleet, at most
        ``timeout`` seconds (None: no limit); whether a view is in hand."""
        if self._first_read is None:
            self._first_read = asyncio.Event()
            loop = asyncio.get_running_loop()
            self._watcher = loop.create_task(self._watch_forever())
        if not self._first_read.is_set():
            await self.refresh(max_age=0.0, timeout=timeout)
        return self._first_read.is_set()

    async def refresh(self, max_age: float, timeout: float | None = None) -> bool:
        """Read Serve's details unless the view is younger than ``max_age`` seconds (one
        read at a time; concurrent callers share it). Wait for it at most ``timeout``
        seconds (None: no limit): Serve's controller can be slow to answer, and a request
        must not outlive its deadline waiting for it. Whether the view is that young now."""
        return await self._reading.refresh(max_age, timeout)

    async def _read_once(self) -> None:
        try:
            self.health, apps = await asyncio.to_thread(self._read)
            if apps != self.apps:
                self.apps = apps
                if self._on_apps is not None:
                    self._on_apps(apps)
        except Exception:  # the controller may be restarting; keep the last view
            logger.warning("could not read Serve's details", exc_info=True)
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

    def _read(self) -> tuple[dict[str, ModelHealth], dict[str, FoundApp]]:
        details = serve.context._get_global_client().get_serve_details()
        health, apps = read_fleet(details, self.app_name, self.static_names)
        if any(h.running_replicas == 0 and _UNPLACED.search(h.message) for h in health.values()):
            self.capacity = read_capacity(ray.get_runtime_context().gcs_address)
        return health, apps

    def available(self, name: str) -> bool:
        """Whether ``name`` can answer: a running replica, or none yet that it can start on
        demand (scaled to zero); unknown counts as yes until Serve says."""
        health = self.health.get(name)
        if health is None or health.running_replicas > 0:
            return True
        return health.min_replicas == 0 and self.failure(name) is None

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
        if unplaced is None:
            return None
        # Serve also warns while the autoscaler adds a node that fits: then requests wait.
        required = parse_resources(unplaced["required"])
        why = "" if required is None else never_placeable(required, self.capacity)
        if why is None:
            return None
        return ModelUnavailable(
            f"model '{name}' cannot be placed: each replica asks for {unplaced['required']},"
            + (f" {why}" if why else f" the cluster has {unplaced['available']} free")
            + " (lower its resources, or add nodes)"
        )

    def check(self, name: str) -> None:
        """Raise ModelUnavailable (503) if ``name`` has no replica that can answer."""
        error = self.failure(name)
        if error is not None:
            raise error


def read_fleet(
    details: dict[str, Any], own_app: str, static_names: list[str]
) -> tuple[dict[str, ModelHealth], dict[str, FoundApp]]:
    """Health of the deployments the ingress routes to, and the model and pool
    applications beside it, from Serve's instance details (a plain dict)."""
    health: dict[str, ModelHealth] = {}
    apps: dict[str, FoundApp] = {}
    for app_name, app in (details.get("applications") or {}).items():
        deployments = app.get("deployments") or {}
        if app_name == own_app:
            for name in static_names:
                if name in deployments:
                    health[name] = _health(deployments[name])
            continue
        config = app.get("deployed_app_config") or {}
        builder = config.get("import_path")
        if builder not in (MODEL_BUILDER, POOL_BUILDER):
            continue
        apps[app_name] = FoundApp(app_name, builder, dict(config.get("args") or {}))
        if app_name in deployments:
            health[app_name] = _health(deployments[app_name])
    return health, apps


def _health(deployment: dict[str, Any]) -> ModelHealth:
    replicas = tuple(
        {k: _plain(r.get(k)) for k in ("replica_id", "state", "pid", "node_ip", "start_time_s")}
        for r in deployment.get("replicas") or ()
    )
    config = deployment.get("deployment_config") or {}
    autoscaling = config.get("autoscaling_config") or {}
    minimum = autoscaling.get("min_replicas") if autoscaling else config.get("num_replicas")
    return ModelHealth(
        str(_plain(deployment.get("status"))),
        sum(1 for r in replicas if r.get("state") == "RUNNING"),
        deployment.get("message") or "",
        1 if minimum is None else int(minimum),
        replicas,
    )


def _plain(value: Any) -> Any:
    """An enum's value (Serve's details hold its status enums), anything else as is."""
    return getattr(value, "value", value)
