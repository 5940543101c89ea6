"""Markdown tables and PNG plots of a comparison (``compare.json`` -> ``.md`` and ``.png``).

python -m bench.report bench/results/compare.json    # redraw from a saved run

Per model: the tables (every point, every server, issue 14's targets) in ``compare.md``, and
``compare_<model>.png``: each server's and endpoint's throughput at c=64 as a fraction of the
best other server's, this service highlighted, with the machine and the date.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.targets import AT_C, OURS, evaluate

SMOKE_BELOW_S = 10.0  # a run shorter than this per point is labelled a smoke run
OURS_COLOUR = "#d62728"
PEER_COLOUR = "#8c8c8c"
Row = tuple[str, str, dict[str, Any]]  # (endpoint label, protocol, point)
GRPC_PROTOCOLS = ("v2-grpc", "tfserving-grpc")  # hatched in the plot


def rows(model_result: dict[str, Any]) -> list[Row]:
    """Every measured point of a model, in server order."""
    out = []
    for server in model_result["servers"]:
        for label, entry in server.get("endpoints", {}).items():
            for point in entry.get("points", []):
                out.append((label, entry["protocol"], point))
    return out


def is_grpc(protocol: str) -> bool:
    """Whether an endpoint's protocol is a gRPC one (``v2-grpc``, ``tfserving-grpc``)."""
    return protocol in GRPC_PROTOCOLS


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


def targets_markdown(model: str, model_result: dict[str, Any]) -> list[str]:
    """Issue 14's targets for the model: measured, bound, met or not."""
    lines = [
        f"Issue 14 targets, {model} ({OURS}: its best endpoint; every endpoint in *how*):",
        "",
        "| target | measured | target | met | how |",
        "|---|---:|---:|---|---|",
    ]
    for t in evaluate(model, model_result):
        space = "" if t.unit == "x" else " "
        measured = "-" if t.measured is None else f"{t.measured:,.3g}{space}{t.unit}"
        bound = "report only" if t.bound is None else f"{'≥' if t.at_least else '≤'} {t.bound:g}"
        met = {True: "met", False: "**not met**", None: "-"}[t.met]
        if t.bound is not None and t.measured is None:
            met = "not measured"
        lines.append(f"| {t.name} | {measured} | {bound} | {met} | {t.detail} |")
    return lines


def request_line(label: str, request: dict[str, Any]) -> str:
    """One request as the report shows it: HTTP method, URL and body, or the gRPC call."""
    if "method" in request and "target" in request:  # gRPC
        message = json.dumps(request.get("message", {}), separators=(",", ":"))
        return (
            f"- {label}: gRPC `{request['target']}` `{request['method']}` `{message}`"
            f" ({request['body_bytes']} bytes)"
        )
    body = json.dumps(request["body"], separators=(",", ":"))
    return f"- {label}: `POST {request['url']}` `{body}`"


def model_markdown(model: str, model_result: dict[str, Any]) -> list[str]:
    """One model's section: the limit, the tables and targets, what was skipped, the
    exact requests."""
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
    lines += ["", *targets_markdown(model, model_result)]
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
                    if p.get("non_ok_sample"):
                        problems.append(f"  first gRPC error: `{p['non_ok_sample'][:200]}`")
        stop = server.get("stop")
        if stop and (not stop["clean"] or stop["ports_busy_after"]):
            problems.append(f"- **{server['server']}** did not stop cleanly: {stop}")
    if problems:
        lines += ["", "Problems:", "", *problems]
    lines += [
        "",
        f"Requests (one instance each; HTTP with `Content-Type: application/json`, gRPC with"
        f" raw tensors), {model}:",
        "",
    ]
    for server in model_result["servers"]:
        for label, request in server.get("requests", {}).items():
            lines.append(request_line(label, request))
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
    if s.get("grpc_concurrency"):
        lines += [
            f"gRPC points (C = {', '.join(map(str, s['grpc_concurrency']))}; protocol `v2-grpc`:"
            " `ModelInfer` with raw tensors, `tfserving-grpc`: TF Serving's `Predict`), loaded"
            f" by {s.get('grpc_load', 'bench.grpc_load')}: exactly C concurrent calls over"
            f" {s.get('grpc_channels', 1)} HTTP/2 connection(s).",
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


def bars_at(model_result: dict[str, Any]) -> tuple[int, list[tuple[str, str, str, float]]]:
    """The concurrency plotted (c=64, or the highest measured in a run without it) and each
    OK point there: (server, endpoint label, protocol, req/s), in server order."""
    found = [
        (server["server"], label, entry["protocol"], point)
        for server in model_result["servers"]
        for label, entry in server.get("endpoints", {}).items()
        for point in entry.get("points", [])
        if point.get("ok")
    ]
    levels = {point["concurrency"] for *_, point in found}
    if not levels:
        return AT_C, []
    level = AT_C if AT_C in levels else max(levels)
    return level, [(s, lb, pr, p["rps"]) for s, lb, pr, p in found if p["concurrency"] == level]


def machine_line(results: dict[str, Any]) -> str:
    """The machine and the date, for a plot's footnote."""
    m, s = results.get("machine", {}), results.get("settings", {})
    smoke = " (smoke run)" if s.get("duration_s", SMOKE_BELOW_S) < SMOKE_BELOW_S else ""
    return (
        f"{m.get('cpu_model', '?')}, {m.get('physical_cores', '?')} cores"
        f" ({m.get('logical_cpus', '?')} logical CPUs); {m.get('date_utc', '?')};"
        f" commit {m.get('git_revision', '?')}; {s.get('duration_s', '?')} s per point{smoke}"
    )


def plot(model: str, model_result: dict[str, Any], path: Path, footnote: str) -> None:
    """One bar per server and endpoint: throughput at c=64 over the best other server's
    (every server but this one, best over its endpoints), this service highlighted, a line
    at 1.0, the machine and date below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    level, bars = bars_at(model_result)
    others = [(label, rps) for server, label, _, rps in bars if server != OURS]
    best_label, best = max(others, key=lambda item: item[1]) if others else ("", 0.0)
    values = [rps / best if best else rps for *_, rps in bars]
    fig, ax = plt.subplots(figsize=(max(9.0, 1.0 * len(bars) + 5), 5.5))
    xs = range(len(bars))
    colours = [OURS_COLOUR if server == OURS else PEER_COLOUR for server, *_ in bars]
    hatches = ["//" if is_grpc(protocol) else "" for _, _, protocol, _ in bars]
    drawn = ax.bar(xs, values, color=colours, hatch=hatches, edgecolor="black", linewidth=0.5)
    for bar, value, (_, _, _, rps) in zip(drawn, values, bars):
        text = f"{value:.2f}x\n{rps:,.0f}/s" if best else f"{rps:,.0f}/s"
        ax.annotate(
            text,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 2),
            textcoords="offset points",
        )
    ax.set_xticks(list(xs), [label for _, label, _, _ in bars], rotation=30, ha="right")
    for tick, (server, *_) in zip(ax.get_xticklabels(), bars):
        if server == OURS:
            tick.set_color(OURS_COLOUR)
            tick.set_fontweight("bold")
    handles = [
        Patch(facecolor=OURS_COLOUR, edgecolor="black", label=f"this service ({OURS})"),
        Patch(facecolor=PEER_COLOUR, edgecolor="black", label="other servers"),
        Patch(
            facecolor="white",
            edgecolor="black",
            hatch="//",
            label="gRPC (V2 ModelInfer, TF Serving Predict)",
        ),
    ]
    if best:
        line = ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
        line.set_label(f"1.0 = best other server: {best_label}, {best:,.1f} req/s")
        handles.append(line)
        ax.set_ylabel(f"throughput at c={level} / best other server")
        title = f"{model}: throughput at c={level} as a fraction of the best other server"
    else:
        ax.set_ylabel(f"throughput at c={level} (req/s)")
        title = f"{model}: throughput at c={level} (no other server measured)"
    if level != AT_C:
        title += f" (no c={AT_C} point in this run)"
    ax.set_title(title, fontsize=11)
    ax.set_ylim(0, max([*values, 1.0 if best else 0.0], default=1.0) * 1.18 or 1.0)
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    limit = model_result["in_process"]
    limit_text = f"in-process limit {limit['best_items_per_s']:,.0f} items/s"
    if best:
        limit_text += f" = {limit['best_items_per_s'] / best:.2f}x the best other server"
    fig.text(0.01, 0.01, f"{footnote}\n{limit_text}", fontsize=8, va="bottom")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(results: dict[str, Any], out_json: Path) -> list[Path]:
    """Write ``<out>.md`` and ``<out stem>_<model>.png`` beside the JSON; return their paths."""
    written = [out_json.with_suffix(".md")]
    written[0].write_text(markdown(results))
    for model, model_result in results["models"].items():
        path = out_json.with_name(f"{out_json.stem}_{model}.png")
        plot(model, model_result, path, machine_line(results))
        written.append(path)
    return written


if __name__ == "__main__":
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/compare.json")
    for written_path in write(json.loads(source.read_text()), source):
        print(written_path)
