"""The status page at ``GET /``: one static HTML document, its script and style inline.

It is the same bytes for everyone, so it answers at once and without a token (GKE's load
balancer checks ``/`` unless told otherwise). Its script reads ``fleet`` (``GET /fleet``,
which needs the ingress's bearer token when ``auth_tokens`` are set) every 2 seconds and
draws a table per model and pool. A token typed into the page is kept in the tab's
``sessionStorage`` and sent as ``Authorization: Bearer``, never in a URL. No framework and
nothing fetched from elsewhere: clusters often have no internet. Data is written with
``textContent`` only, so no model name or error message can inject markup. It lives in a
Python module, not an .html file, so it ships in the wheel with no package-data settings.
"""

from __future__ import annotations

# Only what the page itself needs: its inline script and style, and its own origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline';"
    " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>serve-app: fleet status</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1b1b1b; }
  h1 { font-size: 1.4em; margin: 0 0 .2em; }
  h2 { font-size: 1.1em; margin: 0 0 .4em; }
  #meta { color: #555; margin-bottom: 1em; }
  #notice { padding: .6em .8em; margin-bottom: 1em; border-radius: 4px; display: none; }
  #notice.shown { display: block; background: #fff4e5; border: 1px solid #f0a040; }
  #auth { display: none; margin-bottom: 1em; }
  #auth.shown { display: block; }
  section { border: 1px solid #ddd; border-radius: 6px; padding: .8em 1em; margin: 0 0 1em; }
  table { border-collapse: collapse; margin: .3em 0; }
  th, td { text-align: left; padding: .15em .8em .15em 0; vertical-align: top; }
  th { color: #555; font-weight: 600; }
  .state { padding: .05em .5em; border-radius: 3px; font-size: .9em; margin-left: .4em; }
  .state.serving { background: #e3f6e3; }
  .state.unavailable { background: #fde2e2; }
  .state.starting, .state.scaled { background: #e8eefc; }
  .state.unknown { background: #eee; }
  .reason { color: #a40000; white-space: pre-wrap; }
  .kind { color: #555; font-weight: normal; }
  .muted { color: #777; }
</style>
</head>
<body>
<h1>Fleet status</h1>
<div id="meta">loading&hellip;</div>
<div id="notice" role="status"></div>
<form id="auth">
  <label>Bearer token for <code>GET /fleet</code>:
    <input id="token" type="password" autocomplete="off" size="40"></label>
  <button type="submit">Show the fleet</button>
</form>
<div id="fleet"></div>
<script>
"use strict";
const REFRESH_MS = 2000;
const TOKEN_KEY = "serve-app-token";
const base = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
let windowS = 60;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function show(value, unit) {
  if (value === null || value === undefined) return "\\u2013";
  return unit ? value + " " + unit : String(value);
}

function notice(text) {
  const box = document.getElementById("notice");
  box.textContent = text || "";
  box.className = text ? "shown" : "";
}

function table(headers, rows) {
  const t = el("table");
  const head = el("tr");
  for (const h of headers) head.appendChild(el("th", h));
  t.appendChild(head);
  for (const row of rows) {
    const tr = el("tr");
    for (const cell of row) tr.appendChild(cell instanceof Node ? wrap(cell) : el("td", cell));
    t.appendChild(tr);
  }
  return t;
}

function wrap(node) {
  const td = el("td");
  td.appendChild(node);
  return td;
}

function fields(pairs) {
  const t = el("table");
  for (const [name, value] of pairs) {
    const tr = el("tr");
    tr.appendChild(el("th", name));
    tr.appendChild(value instanceof Node ? wrap(value) : el("td", value));
    t.appendChild(tr);
  }
  return t;
}

function recentText(r) {
  if (!r) return "\\u2013";
  return r.rps + " req/s (" + r.requests + " requests), p50 " + show(r.p50_ms, "ms") +
    ", errors " + r.errors + " (5xx), " + r.client_errors + " (4xx)";
}

function replicasText(entry) {
  const head = show(entry.running_replicas) + " running, min " + show(entry.min_replicas);
  const each = (entry.replicas || []).map(
    (r) => r.state + " pid " + show(r.pid) + " on " + show(r.node_ip));
  return each.length ? head + ": " + each.join("; ") : head;
}

function reportText(report, state) {
  if (!report) {
    if (state === "scaled to zero") return "not asked: a call would start a replica";
    return state === "serving" ? "not read yet" : "not asked";
  }
  const parts = [];
  if (report.replica && report.replica.pid) parts.push("replica pid " + report.replica.pid);
  if (report.device) parts.push("device " + report.device);
  parts.push(report.age_s + " s ago");
  if (report.error) parts.push(report.error);
  return parts.join(", ");
}

function header(entry, what) {
  const h = el("h2", entry.name);
  h.appendChild(el("span", " " + what + (entry.kind ? " \\u00b7 " + entry.kind : ""), "kind"));
  const cls = entry.state === "scaled to zero" ? "scaled" : entry.state;
  h.appendChild(el("span", entry.state, "state " + cls));
  return h;
}

function statusPairs(entry) {
  const pairs = [["status", entry.status + " (application " + entry.application + ")"]];
  if (entry.reason) pairs.push(["reason", el("span", entry.reason, "reason")]);
  if (entry.message) pairs.push(["message", el("span", entry.message, "muted")]);
  pairs.push(["replicas", replicasText(entry)]);
  return pairs;
}

function modelSection(m) {
  const s = el("section");
  s.dataset.model = m.name;
  s.appendChild(header(m, "model"));
  s.appendChild(fields([
    ...statusPairs(m),
    ["replica report", reportText(m.report, m.state)],
    ["last " + windowS + " s", recentText(m.recent)],
  ]));
  if (m.versions && m.versions.length) {
    s.appendChild(table(
      ["version", "state", "labels", "traffic weight", "requests", "errors", "p50", "error"],
      m.versions.map((v) => [v.version, v.state, v.labels.join(", "), show(v.traffic_weight),
        show(v.requests), show(v.errors), show(v.p50_ms, "ms"), show(v.error)])));
  } else {
    s.appendChild(el("p", "no versions reported" + (m.state === "serving" ? " yet" : ""),
      "muted"));
  }
  return s;
}

function poolSection(p) {
  const s = el("section");
  s.dataset.pool = p.name;
  s.appendChild(header(p, "pool"));
  const holds = p.holds || {};
  const models = p.models || [];
  s.appendChild(fields([
    ...statusPairs(p),
    ["models listed", models.length + (models.length ? ": " + models.slice(0, 30).join(", ") +
      (models.length > 30 ? ", \\u2026" : "") : "")],
    ["a replica holds", holds.models_loaded ? holds.models_loaded.join(", ") +
      (holds.models_loading && holds.models_loading.length ?
        " (loading " + holds.models_loading.join(", ") + ")" : "") +
      " of at most " + show(holds.max_models_per_replica) : "\\u2013"],
    ["replica report", reportText(p.report, p.state)],
    ["last " + windowS + " s", recentText(p.recent)],
  ]));
  const busy = Object.entries((p.recent && p.recent.models) || {});
  if (busy.length) {
    s.appendChild(table(["model", "req/s", "requests", "p50", "errors (5xx)", "4xx"],
      busy.map(([name, r]) => [name, r.rps, r.requests, show(r.p50_ms, "ms"), r.errors,
        r.client_errors])));
  }
  return s;
}

function render(data) {
  windowS = data.ingress.window_s;
  const when = new Date(data.generated_at * 1000).toLocaleTimeString();
  document.getElementById("meta").textContent = "updated " + when + " \\u00b7 " +
    data.models.length + " models, " + data.pools.length + " pools \\u00b7 recent traffic: " +
    "the last " + data.ingress.window_s + " s seen by ingress replica " +
    show(data.ingress.replica) + " \\u00b7 replica reports every " +
    data.ingress.reports_every_s + " s";
  const fleet = document.getElementById("fleet");
  const sections = [...data.models.map(modelSection), ...data.pools.map(poolSection)];
  fleet.replaceChildren(...sections);
}

async function refresh() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = token ? { Authorization: "Bearer " + token } : {};
  let response;
  try {
    response = await fetch(base + "fleet", { headers, cache: "no-store" });
  } catch (error) {
    notice("Cannot reach the service (" + error + "); retrying.");
    return;
  }
  if (response.status === 401) {
    notice("GET /fleet needs a bearer token (the ingress has auth_tokens set)" +
      (token ? ": this one was refused." : "."));
    document.getElementById("auth").className = "shown";
    return;
  }
  if (!response.ok) {
    notice("GET /fleet answered " + response.status + ": " + (await response.text()));
    return;
  }
  document.getElementById("auth").className = "";
  notice("");
  render(await response.json());
}

document.getElementById("auth").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
  refresh();
});

// The next reading starts 2 s after the last one ended: a slow answer never piles them up.
async function poll() {
  try {
    await refresh();
  } finally {
    setTimeout(poll, REFRESH_MS);
  }
}
poll();
</script>
</body>
</html>
"""

PAGE = HTML.encode("utf-8")
