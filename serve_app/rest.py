"""The REST route table: every HTTP route of the ingress, one row each, matched in one place.

A row names its method, its path (``{name}`` is one path segment, ``{name:path}`` the rest
of the path, as Starlette writes them), the handler that answers it, and its group's error
body (TF Serving's ``{"error": ...}``, which the Open Inference Protocol shares, or OpenAI's
``{"error": {"message": ...}}``): an error on a route is answered in its group's body, never
by looking at the URL. The REST entry (``serve_app/asgi.py``) dispatches by this table;
the OpenAPI document is generated from it (``serve_app/fastapi_app.py``). Each protocol's
rows live beside its handlers (``serve_app/routes/``); adding a protocol is a codec, a
handlers module and its rows in ``ROUTES`` there.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from serve_app.errors import ServingError

if TYPE_CHECKING:
    from serve_app.call import CallContext
    from serve_app.dataplane import DataPlane
    from serve_app.http import Reply, StreamReply

ErrorBody = Callable[[ServingError], Any]
_PARAM = re.compile(r"\{(\w+)(:path)?\}")


@dataclass
class RestRequest:
    """What a route's handler gets: the data plane, the call's context, the path's
    parameters, the body (POST routes) and the headers."""

    plane: DataPlane
    ctx: CallContext
    params: dict[str, str]
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[RestRequest], Awaitable["Reply | StreamReply"]]


@dataclass(frozen=True)
class Route:
    """One REST route: ``method path`` answered by ``handler``, errors in ``errors``' body."""

    method: str
    path: str
    handler: Handler
    errors: ErrorBody
    summary: str = ""
    in_schema: bool = True  # listed in the OpenAPI document
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", compile_path(self.path))

    @property
    def reads_body(self) -> bool:
        return self.method == "POST"

    @property
    def params(self) -> list[str]:
        """The path's parameter names, in order."""
        return [name for name, _ in _PARAM.findall(self.path)]


def compile_path(path: str) -> re.Pattern[str]:
    """A route path as a regular expression over the request path (``route_path``)."""
    regex, end = "", 0
    for match in _PARAM.finditer(path):
        regex += re.escape(path[end : match.start()])
        regex += f"(?P<{match[1]}>.*)" if match[2] else f"(?P<{match[1]}>[^/]+)"
        end = match.end()
    # DOTALL: a percent-decoded path may hold a newline; it is still a path to answer.
    return re.compile(f"{regex}{re.escape(path[end:])}", re.DOTALL)


@dataclass(frozen=True)
class Match:
    """What the table found for a request: its route and parameters, or why there is none:
    ``allowed`` holds the routes of the same path for other methods (405), ``redirect`` the
    path with its trailing slash toggled when that one is a route (307, as Starlette)."""

    route: Route | None
    params: dict[str, str] = field(default_factory=dict)
    allowed: tuple[Route, ...] = ()
    redirect: str | None = None

    @property
    def errors(self) -> ErrorBody | None:
        """The error body of the route (or of the path's routes for other methods)."""
        if self.route is not None:
            return self.route.errors
        return self.allowed[0].errors if self.allowed else None


class RouteTable:
    """The routes, matched in their order; ``HEAD`` is answered as ``GET``."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)
        self._by_method: dict[str, list[Route]] = {}
        for route in self.routes:
            self._by_method.setdefault(route.method, []).append(route)

    def match(self, method: str, path: str) -> Match:
        """The route of ``method path``, or why none answers it."""
        method = "GET" if method == "HEAD" else method
        for route in self._by_method.get(method, ()):
            found = route.pattern.fullmatch(path)
            if found is not None:
                return Match(route, found.groupdict())
        allowed = tuple(r for r in self.routes if r.pattern.fullmatch(path))
        if allowed:
            return Match(None, allowed=allowed)
        if path != "/":
            toggled = path[:-1] if path.endswith("/") else path + "/"
            if any(r.pattern.fullmatch(toggled) for r in self.routes):
                return Match(None, redirect=toggled)
        return Match(None)
