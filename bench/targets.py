"""Issue 14's targets, and issue 22's gRPC targets, computed from one comparison run (a
model's results in, rows out).

Pure: it reads what ``bench.compare`` wrote (``compare.json``), so ``bench.report`` can redraw
the table from a saved run. Where this service has several endpoints (V2 JSON, its native
protocol, V2 gRPC, TF Serving gRPC for digits), a target is judged on its best one, and every
endpoint's value is listed beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The names bench.servers gives them (not imported: the report stays free of the servers).
OURS = "serve-app"
TRITON = "triton"
PYTHON_PEERS = ("flask", "mlserver", "litserve", "kserve")
AT_C = 64  # throughput and serving CPU are judged at this concurrency
P50_OVER_INPROCESS_MS = {"digits": 3.0, "minilm": 5.0}
SERVING_CPU_MS = 1.0
IDLE_CORES = 0.05
# Issue 22: each gRPC call of this service against the same call over REST, same run.
GRPC_VS_REST = (
    ("V2", "serve-app (grpc)", "serve-app"),
    ("TF Serving", "serve-app (tfserving grpc)", "serve-app (tfserving)"),
)
GRPC_RPS_RATIO = 0.9
GRPC_P50_OVER_REST_MS = 0.5


@dataclass(frozen=True)
class Target:
    """One target: what, the value measured (None: not measured), the bound, and how."""

    name: str
    measured: float | None
    bound: float | None  # None: reported, not judged
    at_least: bool  # True: measured >= bound meets it; False: measured <= bound
    unit: str
    detail: str

    @property
    def met(self) -> bool | None:
        """Whether the target is met; None when not judged or not measured."""
        if self.bound is None or self.measured is None:
            return None
        return self.measured >= self.bound if self.at_least else self.measured <= self.bound


def points_at(model_result: dict[str, Any], servers: tuple[str, ...], c: int) -> list[tuple]:
    """(endpoint label, point) of every OK point of ``servers`` at concurrency ``c``."""
    return [
        (label, point)
        for server in model_result["servers"]
        if server["server"] in servers
        for label, entry in server.get("endpoints", {}).items()
        for point in entry.get("points", [])
        if point.get("ok") and point["concurrency"] == c
    ]


def best_rps(model_result: dict[str, Any], servers: tuple[str, ...], c: int) -> tuple[str, float]:
    """The best throughput of ``servers`` at ``c`` and its endpoint; ("", 0.0) if none."""
    found = points_at(model_result, servers, c)
    if not found:
        return "", 0.0
    label, point = max(found, key=lambda item: item[1]["rps"])
    return label, point["rps"]


def _ours(
    model_result: dict[str, Any],
    c: int,
    value: Callable[[dict[str, Any]], float | None],
    higher_is_better: bool,
    fmt: str,
) -> tuple[float | None, str]:
    """This service's best value over its endpoints, and every endpoint's, for the detail."""
    values = [(label, value(p)) for label, p in points_at(model_result, (OURS,), c)]
    values = [(label, v) for label, v in values if v is not None]
    if not values:
        return None, f"no OK point of {OURS} at c={c}"
    values.sort(key=lambda item: item[1], reverse=higher_is_better)
    return values[0][1], "; ".join(f"{label} {fmt.format(v)}" for label, v in values)


def _ratio_to(
    model_result: dict[str, Any], servers: tuple[str, ...], who: str, bound: float | None
) -> Target:
    """This service's c=64 throughput over the best of ``servers`` at c=64."""
    label, best = best_rps(model_result, servers, AT_C)
    name = f"c={AT_C} throughput / {who}"
    if not best:
        return Target(name, None, bound, True, "x", f"{who}: no OK point at c={AT_C}")
    measured, detail = _ours(model_result, AT_C, lambda p: p["rps"] / best, True, "{:.2f}x")
    return Target(name, measured, bound, True, "x", f"{who} = {label} {best:,.1f} req/s; {detail}")


def _point(model_result: dict[str, Any], label: str, c: int) -> dict[str, Any] | None:
    """This service's OK point of endpoint ``label`` at ``c``, if measured."""
    return next((p for found, p in points_at(model_result, (OURS,), c) if found == label), None)


def grpc_targets(model_result: dict[str, Any]) -> list[Target]:
    """Issue 22: gRPC at HTTP's speed. Per protocol, c=64 throughput over REST's (>= 0.9x)
    and c=1 p50 minus REST's (<= 0.5 ms), from the same run."""
    targets = []
    for protocol, grpc_label, rest_label in GRPC_VS_REST:
        fast = (_point(model_result, grpc_label, AT_C), _point(model_result, rest_label, AT_C))
        measured, detail = None, f"{grpc_label} or {rest_label} not measured at c={AT_C}"
        if None not in fast:
            measured = fast[0]["rps"] / fast[1]["rps"]
            detail = f"{fast[0]['rps']:,.1f} vs {fast[1]['rps']:,.1f} req/s"
        targets.append(
            Target(
                f"{protocol} gRPC c={AT_C} throughput / REST",
                measured,
                GRPC_RPS_RATIO,
                True,
                "x",
                detail,
            )
        )
        one = (_point(model_result, grpc_label, 1), _point(model_result, rest_label, 1))
        measured, detail = None, f"{grpc_label} or {rest_label} not measured at c=1"
        if None not in one:
            grpc_p50, rest_p50 = one[0]["latency_ms"]["p50"], one[1]["latency_ms"]["p50"]
            measured = grpc_p50 - rest_p50
            detail = f"p50 {grpc_p50:.2f} vs {rest_p50:.2f} ms"
        targets.append(
            Target(
                f"{protocol} gRPC c=1 p50 minus REST",
                measured,
                GRPC_P50_OVER_REST_MS,
                False,
                "ms",
                detail,
            )
        )
    return targets


def evaluate(model: str, model_result: dict[str, Any]) -> list[Target]:
    """Issue 14's targets for ``model`` (and issue 22's gRPC ones for digits), each with the
    value this run measured."""
    limit = model_result["in_process"]
    targets: list[Target] = []
    if model == "minilm":
        best_limit = limit["best_items_per_s"]
        measured, detail = _ours(
            model_result, AT_C, lambda p: p["rps"] / best_limit, True, "{:.2f}x"
        )
        targets.append(
            Target(
                f"c={AT_C} throughput / in-process limit",
                measured,
                0.8,
                True,
                "x",
                f"limit {best_limit:,.1f} items/s at batch {limit['best_batch_size']}; {detail}",
            )
        )
        targets.append(_ratio_to(model_result, (TRITON,), "Triton", 1.0))
    if model == "digits":
        targets.append(_ratio_to(model_result, PYTHON_PEERS, "best Python peer", 1.2))
        targets.append(_ratio_to(model_result, (TRITON,), "Triton", None))
        targets += grpc_targets(model_result)
    one_row = limit.get("batch1_p50_ms")
    if model in P50_OVER_INPROCESS_MS:
        measured, detail = (None, "no in-process one-row p50")
        if one_row is not None:
            measured, detail = _ours(
                model_result, 1, lambda p: p["latency_ms"]["p50"] - one_row, False, "{:+.2f} ms"
            )
            detail = f"in-process one row {one_row:.2f} ms; {detail}"
        targets.append(
            Target(
                "c=1 p50 minus the in-process one-row call",
                measured,
                P50_OVER_INPROCESS_MS[model],
                False,
                "ms",
                detail,
            )
        )
    # The model's own CPU per item in-process at its best batch (all its threads); older
    # results lack it: then wall time per item, which undercounts a multi-threaded model.
    compute_ms = limit.get("best_cpu_ms_per_item") or 1000 / limit["best_items_per_s"]
    source = (
        "CPU per item in-process at the best batch"
        if limit.get("best_cpu_ms_per_item")
        else "1000 / the limit"
    )
    measured, detail = _ours(
        model_result,
        AT_C,
        lambda p: (
            None if p.get("cpu_ms_per_request") is None else p["cpu_ms_per_request"] - compute_ms
        ),
        False,
        "{:.2f} ms",
    )
    targets.append(
        Target(
            f"serving CPU per request at c={AT_C} (server CPU minus the model's compute)",
            measured,
            SERVING_CPU_MS,
            False,
            "ms",
            f"model compute {compute_ms:.3f} ms/request ({source}); {detail}",
        )
    )
    ours = next((s for s in model_result["servers"] if s["server"] == OURS), {})
    idle = (ours.get("idle") or {}).get("cores_busy")
    seconds = (ours.get("idle") or {}).get("seconds")
    targets.append(
        Target(
            "idle CPU of the running service",
            idle,
            IDLE_CORES,
            False,
            "cores",
            f"{seconds} s without requests" if idle is not None else f"{OURS} idle not measured",
        )
    )
    return targets
