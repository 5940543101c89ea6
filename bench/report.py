"""Markdown tables and PNG plots of a comparison (``compare.json`` -> ``.md`` and ``.png``).

python -m bench.report bench/results/compare.json    # redraw from a saved run
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SMOKE_BELOW_S = 10.0  # a run shorter than this per point is labelled a smoke run
Row = tuple[str, str, dict[str, Any]]  # (endpoint label, protocol, point)


def rows(model_result: dict[str, Any]) -> list[Row]:
    """Every measured point of a model, in server order."""
    out = []
    for server in model_result["servers"]:
        for label, entry in server.get("endpoints", {}).items():
            for point in entry.get("points", []):
                out.append((label, entry["protocol"], point))
    return out


def all_ok(results: dict[str, Any]) -> bool:
    """No server failed to start or answered wrongly, and no measured run had errors."""
    for model_result in results["models"].values():
        for server in model_result["servers"]:
            if server.get("status") == "failed":
                return False
            for entry in server.get("endpoints", {}).values():
                if not entry["check"]["ok"] or not all(p["ok"] for p in entry["points"]):
                    return False
    return True


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def model_markdown(model: str, model_result: dict[str, Any]) -> list[str]:
    """One model's section: the limit, the table, what was skipped, the exact requests."""
    limit = model_result["in_process"]
    lines = [f"## {model}", ""]
    lines.append(
        f"**In-process limit:** {_num(limit['best_items_per_s'])} items/s at batch"
        f" {limit['best_batch_size']}; one row takes {_num(limit['batch1_p50_ms'], 2)} ms"
        f" (p50). Frameworks: {json.dumps(limit['frameworks'])}."
    )
    lines += ["", "| batch | items/s | call p50 ms | call p99 ms |", "|---:|---:|---:|---:|"]
    for size, entry in limit["by_batch_size"].items():
        lines.append(
            f"| {size} | {_num(entry['items_per_s'])} | {_num(entry['call_p50_ms'], 2)}"
            f" | {_num(entry['call_p99_ms'], 2)} |"
        )
    lines += [
        "",
        "| server | protocol | C | req/s | p50 ms | p99 ms | server CPU ms/req | server cores"
        " | errors | x limit | x best peer | c=1 p50 minus in-process ms | other load (cores) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, protocol, p in rows(model_result):
        if not p.get("ok") and "requests" not in p:
            lines.append(f"| {label} | {protocol} | {p['concurrency']} | failed: {p['failure']} |")
            continue
        lat = p["latency_ms"]
        lines.append(
            f"| {label} | {protocol} | {p['concurrency']} | {_num(p['rps'])}"
            f" | {_num(lat['p50'], 2)} | {_num(lat['p99'], 2)}"
            f" | {_num(p.get('cpu_ms_per_request'), 2)} | {_num(p['server_cores_busy'], 2)}"
            f" | {p['errors']} | {_ratio(p.get('vs_limit'))} | {_ratio(p.get('vs_best_peer'))}"
            f" | {_num(p.get('p50_minus_inprocess_ms'), 2)} | {_num(p['other_cores_busy'], 2)} |"
        )
    lines += [
        "",
        "| server | status | ready after s | then settled in s | idle CPU (cores) | processes"
        " | stopped by |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for server in model_result["servers"]:
        ready = server.get("ready", {})
        stop = server.get("stop", {})
        lines.append(
            f"| {server['server']} | {server.get('status')} | {_num(ready.get('ready_s'))}"
            f" | {_num(server.get('settle', {}).get('waited_s'))}"
            f" | {_num(server.get('idle', {}).get('cores_busy'), 3)}"
            f" | {len(server.get('processes', []))} | {', '.join(stop.get('steps', [])) or '-'} |"
        )
    problems = []
    for server in model_result["servers"]:
        if server.get("status") in ("skipped", "failed"):
            problems.append(f"- **{server['server']}** {server['status']}: {server['reason']}")
        for label, entry in server.get("endpoints", {}).items():
            if not entry["check"]["ok"]:
                problems.append(f"- **{label}** answered wrongly: {entry['check'].get('error')}")
            for p in entry.get("points", []):
                if not p["ok"]:
                    problems.append(f"- **{label}** c={p['concurrency']}: {p.get('failure')}")
                    if p.get("non200_sample"):
                        problems.append(f"  first non-200 body: `{p['non200_sample'][:200]}`")
        stop = server.get("stop")
        if stop and (not stop["clean"] or stop["ports_busy_after"]):
            problems.append(f"- **{server['server']}** did not stop cleanly: {stop}")
    if problems:
        lines += ["", "Problems:", "", *problems]
    lines += ["", f"Requests (one instance each; `Content-Type: application/json`), {model}:", ""]
    for server in model_result["servers"]:
        for label, request in server.get("requests", {}).items():
            body = json.dumps(request["body"], separators=(",", ":"))
            lines.append(f"- {label}: `POST {request['url']}` `{body}`")
    lines.append("")
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The whole report."""
    m, s = results["machine"], results["settings"]
    lines = [
        "# Comparison with peers",
        "",
        f"`{results['command']}` on {m['date_utc']}, commit {m['git_revision']}.",
        "",
    ]
    if s["duration_s"] < SMOKE_BELOW_S:
        lines += [
            f"**Smoke run** ({s['duration_s']} s per point): these numbers check the harness;"
            " measure with the default 15 s on a quiet machine before quoting them.",
            "",
        ]
    lines += [
        f"Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs"
        f" ({m['physical_cores']} cores), {m['memory_gib']} GiB, {m['os']}, kernel"
        f" {m['kernel']}. Load average at start {m['loadavg_at_start']}, at end"
        f" {m.get('loadavg_at_end')}.",
        "",
        f"Load: {s['wrk']}, closed loop, exactly C connections, {s['wrk_threads']} wrk"
        f" thread(s), {s['warmup_s']} s warm-up then {s['duration_s']} s measured per point."
        " Server CPU is user+system of the server's whole process tree during the measured"
        " run; *other load* is the CPU the rest of the machine used meanwhile (noise).",
        "",
    ]
    for model, model_result in results["models"].items():
        lines += model_markdown(model, model_result)
    lines += [
        "## Servers",
        "",
        "| server | configured as | batching | versions |",
        "|---|---|---|---|",
    ]
    configured: dict[str, dict[str, Any]] = {}
    for model_result in results["models"].values():
        for server in model_result["servers"]:
            configured.setdefault(server["server"], server["settings"])
    for name, settings in configured.items():
        versions = results["versions"].get(name, {})
        shown = ", ".join(f"{k} {v}" for k, v in versions.items() if k != "executable" and v)
        lines.append(f"| {name} | {settings['configured_as']} | {settings['batching']} | {shown} |")
    return "\n".join(lines) + "\n"


def plot(model: str, model_result: dict[str, Any], path: Path) -> None:
    """Throughput vs concurrency per server (the limit as a line), p50 and p99 bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[dict[str, Any]]] = {}
    for label, _, point in rows(model_result):
        if point.get("ok"):
            series.setdefault(label, []).append(point)
    fig, (ax_t, ax_50, ax_99) = plt.subplots(1, 3, figsize=(18, 5.5))
    for label, points in series.items():
        xs = [p["concurrency"] for p in points]
        ax_t.plot(xs, [p["rps"] for p in points], marker="o", label=label)
    limit = model_result["in_process"]
    ax_t.axhline(
        limit["best_items_per_s"],
        color="black",
        linestyle="--",
        label=f"in-process limit (batch {limit['best_batch_size']})",
    )
    levels = sorted({p["concurrency"] for points in series.values() for p in points})
    ax_t.set(xscale="log", yscale="log", xlabel="concurrency (connections)")
    ax_t.set_xticks(levels, [str(level) for level in levels])
    ax_t.minorticks_off()
    ax_t.set(ylabel="throughput (req/s = items/s)", title=f"{model}: throughput")
    ax_t.legend(fontsize=8)
    labels = list(series)
    width = 0.8 / max(1, len(levels))
    for ax, key in ((ax_50, "p50"), (ax_99, "p99")):
        for i, level in enumerate(levels):
            values = [
                next((p["latency_ms"][key] for p in series[lb] if p["concurrency"] == level), 0)
                for lb in labels
            ]
            xs = [j + (i - (len(levels) - 1) / 2) * width for j in range(len(labels))]
            ax.bar(xs, values, width=width, label=f"c={level}")
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set(yscale="log", ylabel=f"{key} latency (ms)", title=f"{model}: {key} latency")
        ax.legend(fontsize=8)
    if limit.get("batch1_p50_ms"):
        ax_50.axhline(
            limit["batch1_p50_ms"], color="black", linestyle="--", label="in-process, 1 row"
        )
        ax_50.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(results: dict[str, Any], out_json: Path) -> list[Path]:
    """Write ``<out>.md`` and ``<out stem>_<model>.png`` beside the JSON; return their paths."""
    written = [out_json.with_suffix(".md")]
    written[0].write_text(markdown(results))
    for model, model_result in results["models"].items():
        path = out_json.with_name(f"{out_json.stem}_{model}.png")
        plot(model, model_result, path)
        written.append(path)
    return written


if __name__ == "__main__":
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/compare.json")
    for written_path in write(json.loads(source.read_text()), source):
        print(written_path)
