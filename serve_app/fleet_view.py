"""The fleet as the status page shows it (``GET /fleet``): models, pools, replicas, versions
and recent traffic.

Three sources: the ingress's view of Serve (``FleetStatus``: status, failure reasons,
replicas with pid, state and node), one replica's report per model (``model_stats``: versions
with their states, labels, traffic weights and per-version requests; a pool replica's
``pool_report``: the models it holds), and this ingress replica's recent window
(``serve_app/recent.py``). The reports are read at most every ``REPORT_TTL_S``, all at once,
each within ``REPORT_TIMEOUT_S``, so a page refreshing every 2 s does not call every model
each time, and one slow model never holds the page. A model that cannot answer is not asked:
a failed one shows its reason, one at zero replicas shows "scaled to zero" (a call would start
a replica), and one that may scale to zero is asked only while it has traffic, so the page
never keeps it awake.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from serve_app.call import CallContext
from serve_app.dataplane import DataPlane
from serve_app.errors import DeadlineExceeded, ServingError
from serve_app.fleet_status import ModelHealth
from serve_app.recent import TRAFFIC, RecentTraffic
from serve_app.replica_api import ReplicaMethod
from serve_app.shared_read import SharedRead

logger = logging.getLogger("ray.serve")

REPORT_TTL_S = 5.0  # replica reports are read at most this often
REPORT_TIMEOUT_S = 2.0  # each report call; past it the page shows the last one, and why
FLEET_READ_TIMEOUT_S = 5.0  # Serve's details (the controller may be busy or restarting)
# A model that scales to zero is asked for its report only this long after a request to it:
# the page's own calls would otherwise count as load and keep a replica up.
AWAKE_S = 10.0
# A pool may hold thousands of models: its busiest ones in the window are listed, at most.
POOL_MODELS_SHOWN = 50
_NOT_RUNNING = ("STARTING", "UPDATING", "RECOVERING", "PENDING_MIGRATION")


@dataclass(frozen=True)
class Report:
    """One replica's report of a model or pool, as last read."""

    data: dict[str, Any] | None  # model_report() or pool_report_of(); None if none came
    error: str | None  # why the last reading brought no report (its data is older then)
    at: float  # time.time() of the reading that brought ``data``


class FleetView:
    """Builds the status JSON of one ingress replica's data plane."""

    def __init__(self, plane: DataPlane, traffic: RecentTraffic = TRAFFIC) -> None:
        self.plane = plane
        self.traffic = traffic
        self.reports: dict[str, Report] = {}
        self._fetching = SharedRead(self._fetch)

    async def snapshot(self) -> dict[str, Any]:
        """The status of every model and pool now (reports at most ``REPORT_TTL_S`` old)."""
        fleet = self.plane.fleet
        try:
            await asyncio.wait_for(self._read_fleet(), FLEET_READ_TIMEOUT_S)
        except TimeoutError:  # the last view is shown; the page says how old the reports are
            logger.warning("status page: Serve's details took over %ss", FLEET_READ_TIMEOUT_S)
        await self._refresh_reports()
        now = time.time()
        models = [
            model_entry(
                name,
                self.plane.kind_of(name),
                self._application(name),
                fleet.health.get(name),
                self._reason(name),
                self.reports.get(name),
                self.traffic.snapshot(name),
                now,
            )
            for name in sorted(self.plane.handles)
        ]
        pools = [
            pool_entry(
                name,
                view.kind,
                self._application(name),
                fleet.health.get(name),
                self._reason(name),
                sorted(view.models),
                self.reports.get(name),
                self._pool_traffic(name),
                now,
            )
            for name, view in sorted(self.plane.pools.pools.items())
        ]
        return {
            "ingress": {
                "application": fleet.app_name,
                "replica": _replica_id(),
                "window_s": self.traffic.window_s,
                "reports_every_s": REPORT_TTL_S,
            },
            "generated_at": round(now, 3),
            "models": models,
            "pools": pools,
        }

    async def _read_fleet(self) -> None:
        fleet = self.plane.fleet
        await fleet.ready()
        await fleet.refresh(max_age=REPORT_TTL_S)

    def _application(self, name: str) -> str:
        fleet = self.plane.fleet
        return fleet.app_name if name in fleet.static_names else name

    def _reason(self, deployment: str) -> str | None:
        error = self.plane.fleet.failure(deployment)
        return None if error is None else str(error)

    def _pool_models(self, pool: str) -> list[str]:
        """The pool's models with traffic in the window (routed by this ingress)."""
        owner = self.plane.pools.owner
        return [m for m in self.traffic.models() if owner.get(m) == pool]

    def _pool_traffic(self, pool: str) -> dict[str, Any]:
        models = self._pool_models(pool)
        busiest = sorted(
            ((m, self.traffic.snapshot(m)) for m in models), key=lambda kv: -kv[1]["requests"]
        )
        return {
            **self.traffic.combined(models),
            "models": dict(busiest[:POOL_MODELS_SHOWN]),
        }

    # --- replica reports -------------------------------------------------------------------

    async def _refresh_reports(self) -> None:
        """Read the reports if they are older than ``REPORT_TTL_S`` (one reading at a time;
        concurrent pages share it)."""
        await self._fetching.refresh(REPORT_TTL_S)

    async def _fetch(self) -> None:
        plane = self.plane
        names = [*plane.handles, *plane.pools.pools]
        if any(self._may_sleep(n) for n in names):
            # Whether it is at zero replicas now, not up to POLL_INTERVAL_S ago: a call to a
            # model at zero would start a replica.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(plane.fleet.refresh(max_age=1.0), FLEET_READ_TIMEOUT_S)
        self.reports = {n: r for n, r in self.reports.items() if n in names}
        asked = [n for n in names if self._askable(n)]
        results = await asyncio.gather(*(self._ask(n) for n in asked))
        for name, (data, error) in zip(asked, results):
            last = self.reports.get(name)
            if data is None and last is not None and last.data is not None:
                # The last report that came, with why this one did not.
                self.reports[name] = Report(last.data, error, last.at)
            else:
                self.reports[name] = Report(data, error, time.time())

    def _may_sleep(self, name: str) -> bool:
        health = self.plane.fleet.health.get(name)
        return health is not None and health.min_replicas == 0

    def _askable(self, name: str) -> bool:
        health = self.plane.fleet.health.get(name)
        if name in self.plane.handles:
            idle = self.traffic.idle_s(name)
        else:
            idles = [self.traffic.idle_s(m) for m in self._pool_models(name)]
            idle = min((i for i in idles if i is not None), default=None)
        return askable(health, self._reason(name), idle)

    async def _ask(self, name: str) -> tuple[dict[str, Any] | None, str | None]:
        """(the report, None), or (None, why there is none)."""
        ctx = CallContext("status-page", time.monotonic() + REPORT_TIMEOUT_S)
        try:
            if name in self.plane.handles:
                stats = await self.plane.call(ctx, name, ReplicaMethod.MODEL_STATS)
                return model_report(stats), None
            return await self._ask_pool(ctx, name), None
        except DeadlineExceeded:
            return None, f"no report within {REPORT_TIMEOUT_S:g} s"
        except ServingError as exc:
            return None, str(exc)
        except Exception as exc:  # the page shows the others; this one says what happened
            logger.warning("status page: no report from '%s'", name, exc_info=True)
            return None, f"no report ({type(exc).__name__})"

    async def _ask_pool(self, ctx: CallContext, name: str) -> dict[str, Any]:
        view = self.plane.pools.pools[name]
        response = ReplicaMethod.POOL_REPORT.of(view.handle).remote()
        report = await self.plane.answer(ctx, name, response, response.cancel)
        listed = None
        if not view.listed_at:  # the ingress has not listed this pool yet: list it for the page
            response = ReplicaMethod.LIST_MODELS.of(view.handle).remote()
            with contextlib.suppress(ServingError):
                listed = sorted(await self.plane.answer(ctx, name, response, response.cancel))
        return pool_report_of(report, listed)


# --- pure parts: what the page is told ----------------------------------------------------


def state_of(health: ModelHealth | None, reason: str | None) -> str:
    """One word for the page: serving, unavailable (with a reason), starting, scaled to zero
    or unknown (Serve's view not read yet)."""
    if reason is not None:
        return "unavailable"
    if health is None:
        return "unknown"
    if health.running_replicas > 0:
        return "serving"
    if any(r.get("state") in _NOT_RUNNING for r in health.replicas):
        return "starting"
    return "scaled to zero" if health.min_replicas == 0 else "starting"


def askable(health: ModelHealth | None, reason: str | None, idle_s: float | None) -> bool:
    """Whether to ask a model (or pool) for its report: it has a running replica, did not
    fail, and, if it may scale to zero, had a request in the last ``AWAKE_S``."""
    if reason is not None or health is None or health.running_replicas == 0:
        return False
    if health.min_replicas == 0:
        return idle_s is not None and idle_s < AWAKE_S
    return True


def model_report(stats: dict[str, Any]) -> dict[str, Any]:
    """What the page needs of a model replica's ``model_stats``."""
    placement = stats.get("placement") or {}
    return {
        "versions": versions_of(stats),
        "replica": stats.get("replica") or {},
        "device": placement.get("device"),
        "load_seconds": stats.get("load_seconds"),
    }


def versions_of(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """Each version's state, error, labels, traffic weight and the requests it answered in
    the reporting replica, oldest first (``version_traffic``; TF Serving's statuses for a
    replica that has no such report)."""
    traffic = stats.get("version_traffic")
    if traffic is None:
        return [
            {
                "version": int(s["version"]),
                "state": s.get("state"),
                "error": (s.get("status") or {}).get("error_message") or None,
                "labels": [],
                "traffic_weight": None,
                "requests": None,
                "errors": None,
                "p50_ms": None,
            }
            for s in stats.get("versions") or []
        ]
    return [
        {
            "version": int(number),
            "state": v.get("state"),
            "error": v.get("error") or None,
            "labels": list(v.get("labels") or []),
            "traffic_weight": v.get("traffic_weight"),
            "requests": v.get("requests"),
            "errors": v.get("errors"),
            "p50_ms": v.get("p50_ms"),
        }
        for number, v in sorted(traffic.items(), key=lambda kv: int(kv[0]))
    ]


def pool_report_of(report: dict[str, Any], listed: list[str] | None) -> dict[str, Any]:
    """What the page needs of a pool replica's ``pool_report`` (and a listing, if read)."""
    return {"holds": dict(report), "listed": listed}


def _replicas(health: ModelHealth | None) -> dict[str, Any]:
    if health is None:
        return {"running_replicas": None, "min_replicas": None, "replicas": []}
    return {
        "running_replicas": health.running_replicas,
        "min_replicas": health.min_replicas,
        "replicas": [dict(r) for r in health.replicas],
    }


def _common(
    name: str,
    kind: str | None,
    application: str,
    health: ModelHealth | None,
    reason: str | None,
    report: Report | None,
    now: float,
) -> dict[str, Any]:
    status = "UNKNOWN" if health is None else health.status
    message = None
    if reason is None and health is not None and status != "HEALTHY" and health.message:
        message = health.message[:500]  # e.g. why replicas wait (not a failure yet)
    return {
        "name": name,
        "kind": kind,
        "application": application,
        "status": status,
        "state": state_of(health, reason),
        "reason": reason,
        "message": message,
        **_replicas(health),
        "report": None
        if report is None
        else {
            "read_at": round(report.at, 3),
            "age_s": round(max(0.0, now - report.at), 1),
            "error": report.error,
        },
    }


def model_entry(
    name: str,
    kind: str | None,
    application: str,
    health: ModelHealth | None,
    reason: str | None,
    report: Report | None,
    recent: dict[str, Any],
    now: float,
) -> dict[str, Any]:
    """One dedicated model's entry of ``GET /fleet``."""
    entry = _common(name, kind, application, health, reason, report, now)
    data = (report.data if report is not None else None) or {}
    entry["versions"] = data.get("versions", [])
    if entry["report"] is not None:
        entry["report"].update(
            {k: data.get(k) for k in ("replica", "device", "load_seconds") if k in data}
        )
    entry["recent"] = recent
    return entry


def pool_entry(
    name: str,
    kind: str | None,
    application: str,
    health: ModelHealth | None,
    reason: str | None,
    listed: list[str],
    report: Report | None,
    recent: dict[str, Any],
    now: float,
) -> dict[str, Any]:
    """One pool's entry of ``GET /fleet``: the models it lists, what the replica that
    answered holds, and its models' recent traffic."""
    entry = _common(name, kind, application, health, reason, report, now)
    data = (report.data if report is not None else None) or {}
    entry["models"] = listed or data.get("listed") or []
    entry["holds"] = data.get("holds")
    entry["recent"] = recent
    return entry


def _replica_id() -> str | None:
    """This ingress replica's id (the recent traffic is what it saw)."""
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a replica (unit tests)
        return None
