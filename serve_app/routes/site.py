"""The ingress's own pages: the status page at ``/`` and the fleet's data at ``/fleet``."""

from __future__ import annotations

import weakref

from serve_app import status_page
from serve_app.dataplane import DataPlane
from serve_app.errors import tfserving_error_body
from serve_app.fleet_view import FleetView
from serve_app.http import Reply
from serve_app.jsonio import json_bytes
from serve_app.rest import RestRequest, Route

PAGE_HEADERS = {
    "cache-control": "no-cache",
    "content-security-policy": status_page.CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
}
# One view per data plane (one per ingress replica): it keeps the replicas' last reports.
_views: weakref.WeakKeyDictionary[DataPlane, FleetView] = weakref.WeakKeyDictionary()


def view_of(plane: DataPlane) -> FleetView:
    """The fleet view of this ingress replica's data plane."""
    view = _views.get(plane)
    if view is None:
        view = _views[plane] = FleetView(plane)
    return view


async def _page(r: RestRequest) -> Reply:
    return Reply(status_page.PAGE, 200, "text/html; charset=utf-8", dict(PAGE_HEADERS))


async def _fleet(r: RestRequest) -> Reply:
    body = json_bytes(await view_of(r.plane).snapshot())
    return Reply(body, 200, headers={"cache-control": "no-store"})


# ``/`` is static (no token: it is also what a load balancer checks); the data it shows
# comes from ``/fleet``, guarded like every other route.
ROUTES = [
    Route("GET", "/", _page, tfserving_error_body, "The status page", in_schema=False),
    Route(
        "GET",
        "/fleet",
        _fleet,
        tfserving_error_body,
        "Every model and pool: status, reason, replicas, versions, recent traffic",
    ),
]
