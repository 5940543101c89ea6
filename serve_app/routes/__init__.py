"""The REST routes, per protocol: each module's handlers and its rows of the route table.

``TABLE`` is every REST route of the ingress (``serve_app/rest.py``); the inference routes
come first, as they carry almost all the traffic.
"""

from __future__ import annotations

from serve_app.rest import RouteTable
from serve_app.routes import openai, site, tfserving, v2

TABLE = RouteTable([*tfserving.ROUTES, *v2.ROUTES, *openai.ROUTES, *site.ROUTES])
