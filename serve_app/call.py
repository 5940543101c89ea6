"""One call to the ingress, whatever the transport: the scope every REST route and every gRPC
method runs in.

A transport adapter (``serve_app/asgi.py`` for HTTP, ``serve_app/grpc/servicers.py`` for
gRPC) opens a ``Call`` with what it read from its request: the request id, the bearer token,
the timeout. The call checks the token and sets the deadline (``admit``), holds the request
body's bytes against the ingress's budget (``hold``), and when it ends gives them back and
records the request's metrics and, when on, its access-log line (``close``). The adapters
only translate: their requests into a call, and ``ServingError``s into their status codes
and bodies. The data plane sees the call's ``CallContext``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from serve_app import metrics
from serve_app.guard import Settings, check_auth, deadline_margin, effective_timeout, log_safe
from serve_app.limits import BodyBudget

logger = logging.getLogger("ray.serve")


@dataclass
class CallContext:
    """One request as every transport describes it to the data plane."""

    request_id: str = "-"
    deadline: float | None = None  # time.monotonic() by which the model must have answered
    model: str = "-"  # set by the data plane once it knows (access log, metrics)

    def remaining_s(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()


class Call:
    """One request from its arrival to its answer: auth, deadline, body bytes held, and on
    ``close`` the metrics and the access log."""

    __slots__ = ("_bodies", "_held", "_settings", "ctx", "started", "what")

    def __init__(self, settings: Settings, bodies: BodyBudget, what: str, request_id: str) -> None:
        self.started = time.monotonic()
        self.ctx = CallContext(request_id)
        self.what = what  # how the access log names the call: "POST /v2/..." or "gRPC Predict"
        self._settings = settings
        self._bodies = bodies
        self._held = 0

    def admit(
        self, authorization: bytes | str | None, timeout: str | None, open_route: bool = False
    ) -> None:
        """401 unless the bearer token is one of the configured ones (an open route needs
        none); 400 for a timeout that is not a positive number. Sets the deadline: the
        timeout (bounded by the maximum) or the default, less a margin so that our 504 comes
        first."""
        settings = self._settings
        if settings.tokens and not open_route:
            check_auth(authorization, settings.tokens)
        seconds = effective_timeout(timeout, settings)
        self.ctx.deadline = self.started + seconds - deadline_margin(seconds)

    def hold(self, size: int) -> None:
        """Hold ``size`` more bytes of request body against ``max_buffered_bytes`` (503 past
        it) until the call closes."""
        self._bodies.take(size)
        self._held += size

    def held(self, size: int) -> None:
        """Count ``size`` bytes already taken from the budget (a body read chunk by chunk) as
        this call's, given back when it closes."""
        self._held += size

    def close(self, status: int, outcome: str | None = None) -> None:
        """Give the body bytes back; record the metrics and the access-log line. ``status``
        is the HTTP status (a gRPC call's status as REST would answer it); ``outcome`` is
        what the log shows instead (a gRPC code's name)."""
        self._bodies.give(self._held)
        self._held = 0
        elapsed = time.monotonic() - self.started
        ctx = self.ctx
        metrics.record_request(ctx.model, status, elapsed)
        if self._settings.access_log:
            logger.info(
                "%s -> %s in %.1f ms (model %s, request id %s)",
                log_safe(self.what),
                outcome or status,
                elapsed * 1000,
                ctx.model,
                log_safe(ctx.request_id),
            )
