"""The comparison's report from a small hand-made run: issue 14's targets, the tables, the
plot. Pure code: no server, no load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.targets import Target, evaluate


def point(c: int, rps: float, p50: float = 10.0, cpu_ms: float | None = 2.0) -> dict[str, Any]:
    """One OK measured point as bench.compare writes it."""
    return {
        "concurrency": c,
        "ok": True,
        "requests": int(rps * 10),
        "rps": rps,
        "latency_ms": {"p50": p50, "p99": 2 * p50},
        "errors": 0,
        "cpu_ms_per_request": cpu_ms,
        "server_cores_busy": 1.0,
        "other_cores_busy": 0.0,
    }


def server(name: str, endpoints: dict[str, tuple[str, list]], idle: float = 0.0) -> dict:
    """A server's result: its endpoints (label -> protocol, points) and its idle CPU."""
    return {
        "server": name,
        "status": "ok",
        "settings": {"configured_as": f"{name} as run", "batching": "-"},
        "ready": {"ok": True, "ready_s": 1.0},
        "idle": {"seconds": 3.0, "cores_busy": idle},
        "stop": {"steps": ["SIGINT"], "clean": True, "ports_busy_after": []},
        "requests": {
            label: {"protocol": "v2", "url": "http://127.0.0.1:1/x", "body": {"inputs": []}}
            for label in endpoints
        },
        "endpoints": {
            label: {"protocol": protocol, "check": {"ok": True}, "points": points}
            for label, (protocol, points) in endpoints.items()
        },
    }


def model_result(ours_rps: float, ours_p50: float, ours_cpu: float, idle: float) -> dict:
    """A model with a limit of 1,000 items/s (1 ms of compute per item), one-row p50 2 ms."""
    ours = server(
        "serve-app",
        {
            "serve-app": (
                "v2",
                [point(1, 50, ours_p50 + 1), point(64, ours_rps * 0.9, cpu_ms=ours_cpu + 0.5)],
            ),
            "serve-app (grpc)": (
                "v2-grpc",
                [point(1, 60, ours_p50), point(64, ours_rps, cpu_ms=ours_cpu)],
            ),
        },
        idle=idle,
    )
    ours["requests"]["serve-app (grpc)"] = {
        "protocol": "v2-grpc",
        "target": "127.0.0.1:9000",
        "method": "/inference.GRPCInferenceService/ModelInfer",
        "message": {"model_name": "m", "inputs": [{"name": "x", "shape": [1, 64]}]},
        "body_bytes": 300,
    }
    return {
        "in_process": {
            "best_items_per_s": 1000.0,
            "best_batch_size": 32,
            "batch1_p50_ms": 2.0,
            "frameworks": {},
            "by_batch_size": {"1": {"items_per_s": 400.0, "call_p50_ms": 2.0, "call_p99_ms": 3.0}},
        },
        "servers": [
            ours,
            server("flask", {"flask": ("flask", [point(1, 40), point(64, 300)])}),
            server("mlserver", {"mlserver": ("v2", [point(1, 40), point(64, 400)])}),
            server(
                "triton",
                {
                    "triton": ("v2", [point(1, 40), point(64, 500)]),
                    "triton (grpc)": ("v2-grpc", [point(1, 45), point(64, 800)]),
                },
            ),
        ],
    }


def results() -> dict[str, Any]:
    """Both models: digits meets every target, minilm misses every one."""
    return {
        "command": "python -m bench.compare",
        "settings": {"duration_s": 15.0, "warmup_s": 3.0, "wrk": "wrk 4.1.0", "wrk_threads": 1},
        "machine": {
            "date_utc": "2026-11-27T12:00:00+00:00",
            "cpu_model": "Test CPU",
            "logical_cpus": 2,
            "physical_cores": 2,
            "memory_gib": 8,
            "os": "Linux",
            "kernel": "6",
            "git_revision": "abc1234",
            "loadavg_at_start": [0.0],
        },
        "versions": {},
        "models": {
            # digits: 600 / 400 (mlserver) = 1.5x; p50 4 - 2 = 2 ms; CPU 1.5 - 1 = 0.5 ms.
            "digits": model_result(ours_rps=600, ours_p50=4.0, ours_cpu=1.5, idle=0.01),
            # minilm: 700 / 1000 = 0.7x the limit, 700 / 800 = 0.875x Triton; p50 +8 ms.
            "minilm": model_result(ours_rps=700, ours_p50=10.0, ours_cpu=4.0, idle=0.2),
        },
    }


def by_name(targets: list[Target]) -> dict[str, Target]:
    return {t.name.split(" (")[0]: t for t in targets}


def test_digits_targets_are_computed_from_the_run_and_met() -> None:
    targets = by_name(evaluate("digits", results()["models"]["digits"]))
    python_peer = targets["c=64 throughput / best Python peer"]
    assert python_peer.measured == pytest.approx(1.5) and python_peer.met is True
    assert "mlserver 400.0 req/s" in python_peer.detail  # Triton is not a Python peer
    triton = targets["c=64 throughput / Triton"]
    assert triton.measured == pytest.approx(600 / 800)  # Triton's best endpoint: gRPC
    assert triton.bound is None and triton.met is None  # reported, not judged
    assert targets["c=1 p50 minus the in-process one-row call"].measured == pytest.approx(2.0)
    serving = targets["serving CPU per request at c=64"]
    assert serving.measured == pytest.approx(1.5 - 1.0) and serving.met is True
    assert targets["idle CPU of the running service"].met is True
    assert "c=64 throughput / in-process limit" not in targets  # a minilm target only


def test_grpc_targets_compare_each_protocol_with_its_rest_call() -> None:
    targets = {t.name: t for t in evaluate("digits", results()["models"]["digits"])}
    throughput = targets["V2 gRPC c=64 throughput / REST"]
    assert throughput.measured == pytest.approx(600 / 540) and throughput.met is True
    latency = targets["V2 gRPC c=1 p50 minus REST"]
    assert latency.measured == pytest.approx(4.0 - 5.0) and latency.met is True
    # No TF Serving points in this run: not measured, so not met either.
    assert targets["TF Serving gRPC c=64 throughput / REST"].measured is None
    assert targets["TF Serving gRPC c=1 p50 minus REST"].met is None
    assert not any("gRPC" in t.name for t in evaluate("minilm", results()["models"]["minilm"]))


def test_minilm_targets_not_met_and_shown_as_such() -> None:
    run = results()
    targets = by_name(evaluate("minilm", run["models"]["minilm"]))
    assert targets["c=64 throughput / in-process limit"].measured == pytest.approx(0.7)
    assert targets["c=64 throughput / Triton"].measured == pytest.approx(700 / 800)
    assert targets["c=1 p50 minus the in-process one-row call"].measured == pytest.approx(8.0)
    assert not any(t.met for t in targets.values())
    section = "\n".join(report.model_markdown("minilm", run["models"]["minilm"]))
    assert "| c=64 throughput / in-process limit | 0.7x | ≥ 0.8 | **not met** |" in section
    assert "gRPC `127.0.0.1:9000` `/inference.GRPCInferenceService/ModelInfer`" in section
    assert "| serve-app (grpc) | v2-grpc | 64 | 700.0 |" in section


def test_a_target_without_its_points_is_not_measured() -> None:
    minilm = results()["models"]["minilm"]
    minilm["servers"] = [s for s in minilm["servers"] if s["server"] != "triton"]
    triton = by_name(evaluate("minilm", minilm))["c=64 throughput / Triton"]
    assert triton.measured is None and triton.met is None
    assert "not measured" in "\n".join(report.targets_markdown("minilm", minilm))


def test_report_writes_markdown_and_a_plot_per_model(tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    out.write_text(json.dumps(results()))
    written = report.write(json.loads(out.read_text()), out)
    assert [p.name for p in written] == ["compare.md", "compare_digits.png", "compare_minilm.png"]
    assert all(p.stat().st_size > 0 for p in written)
    assert written[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    level, bars = report.bars_at(results()["models"]["digits"])
    assert level == 64 and ("serve-app", "serve-app (grpc)", "v2-grpc", 600) in bars
    assert "Test CPU, 2 cores" in report.machine_line(results())


def test_tfserving_grpc_points_render_beside_v2_grpc(tmp_path: Path) -> None:
    run = results()
    run["settings"].update(
        grpc_concurrency=[1, 64],
        grpc_channels=1,
        grpc_load="h2load nghttp2/1.52.0 (closed loop: C concurrent streams)",
    )
    ours = run["models"]["digits"]["servers"][0]
    ours["endpoints"]["serve-app (tfserving grpc)"] = {
        "protocol": "tfserving-grpc",
        "check": {"ok": True},
        "points": [point(1, 55, 5.0), point(64, 550, cpu_ms=1.8)],
    }
    ours["requests"]["serve-app (tfserving grpc)"] = {
        "protocol": "tfserving-grpc",
        "target": "127.0.0.1:9000",
        "method": "/tensorflow.serving.PredictionService/Predict",
        "message": {"model_spec": {"name": "digits"}},
        "body_bytes": 295,
    }
    text = report.markdown(run)
    assert "loaded by h2load nghttp2/1.52.0 (closed loop" in text
    assert "`tfserving-grpc`: TF Serving's `Predict`" in text
    assert "| serve-app (tfserving grpc) | tfserving-grpc | 64 | 550.0 |" in text
    assert "`/tensorflow.serving.PredictionService/Predict`" in text
    level, bars = report.bars_at(run["models"]["digits"])
    assert level == 64
    assert ("serve-app", "serve-app (tfserving grpc)", "tfserving-grpc", 550) in bars
    assert [report.is_grpc(protocol) for *_, protocol, _ in bars] == [
        False,
        True,
        True,
        False,
        False,
        False,
        True,
    ]
    out = tmp_path / "compare.json"
    assert report.write(run, out)[1].read_bytes()[:4] == b"\x89PNG"
