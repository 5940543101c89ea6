"""Autoscaling on requests, not handle calls.

The ingress coalesces a model's concurrent requests into few handle calls
(``serve_app/coalesce.py``), so Serve's own count of ongoing requests per replica counts
calls: 64 waiting requests in two calls would look like a load of 2. Each model replica
therefore reports the requests it holds (``record_autoscaling_stats``), and this policy
scales on their sum against ``target_ongoing_requests``, as Serve's default policy does on
its own count. Serve's wrapper still applies min/max replicas, the scaling factors and the
up/down delays, and starts a first replica at once when a deployment at zero gets a call.
"""

from __future__ import annotations

from typing import Any

REQUESTS_METRIC = "serve_app_requests_in_replica"
POLICY = "serve_app.autoscaling:requests_policy"


def requests_policy(ctx: Any) -> tuple[float, dict[str, Any]]:
    """Desired replicas = requests in all replicas (or Serve's own count, whichever is
    larger: calls still queued in the handles) / ``target_ongoing_requests``."""
    running = ctx.current_num_replicas
    if running == 0:
        return ctx.target_num_replicas, {}
    per_replica = (ctx.aggregated_metrics or {}).get(REQUESTS_METRIC, {})
    requests = max(float(sum(per_replica.values())), float(ctx.total_num_requests))
    target = ctx.config.get_target_ongoing_requests()
    return requests / target, {}
