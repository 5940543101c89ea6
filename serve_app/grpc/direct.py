"""The ingress replica's own gRPC server (Serve's direct ingress) calling the ingress's
methods without Serve's per-request wrapper.

Under the fast path each ingress replica runs a gRPC server that HAProxy forwards to, and
Serve wraps every unary call it serves in its request machinery: a context copy, request
ids, request metadata, tracing, an async generator, a response generator, and Serve's
request metrics. Measured on the 2-core machine (``bench/NOTES.md``, "gRPC at HTTP's
speed"), that wrapper, not gRPC itself, held V2 ``ModelInfer`` at ~0.6x of REST at c=64.
The ingress's gRPC methods need none of it: the call scope (``serve_app/call.py``) does
auth, the deadline, the body budget, metrics and the access log for every transport. So on
the ingress replica's own server each unary call goes straight to the method of its RPC's
name, keeping what Serve's drain and autoscaling read: the replica's count of ongoing
requests. Serve's own gRPC request metrics are not counted for these calls; ours are
(``serve_app/metrics.py``).

Anything else (Serve's Python proxy, a Ray whose replica differs from what is read here)
keeps Serve's own path: ``for_factory`` returns None.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from serve_app.grpc.services import REQUEST_ID_KEY

logger = logging.getLogger("ray.serve")

Unary = Callable[[bytes, Any], Awaitable[bytes]]


class DirectCalls:
    """Unary handlers that call the ingress replica's methods directly."""

    def __init__(self, user_callable: Any, metrics: Any, metadata: Any) -> None:
        self._user_callable = user_callable  # Serve's wrapper; the ingress is its callable
        self._metrics = metrics
        self._metadata = metadata  # what Serve's ongoing-request count is told of each call
        # Request ids unique to this replica, cheaper than a UUID per call.
        self._id_prefix = uuid.uuid4().hex[:16]
        self._ids = itertools.count(1)

    @classmethod
    def for_factory(cls, factory: Any) -> DirectCalls | None:
        """Direct calls for the server whose handler factory is ``factory``: only an
        ingress replica's (Serve's direct ingress), and only where the replica has what is
        used here."""
        replica = getattr(factory, "__self__", None)
        user_callable = getattr(replica, "_user_callable_wrapper", None)
        metrics = getattr(replica, "_metrics_manager", None)
        if user_callable is None or metrics is None:
            return None
        try:
            from ray.serve._private.common import RequestMetadata, RequestProtocol

            metadata = RequestMetadata(
                request_id="",
                internal_request_id="",
                _request_protocol=RequestProtocol.GRPC,
                is_direct_ingress=True,
            )
            if not callable(getattr(metrics, "inc_num_ongoing_requests", None)):
                return None
        except (ImportError, TypeError, AttributeError):  # another Ray: Serve's own path
            logger.warning("serve-app: gRPC calls go through Serve's request path", exc_info=True)
            return None
        return cls(user_callable, metrics, metadata)

    def unary(self, service_method: str, wrap_context: Callable[[Any], Any]) -> Unary:
        """The handler of ``/package.Service/Method``: the ingress's method ``Method`` with
        the call's context as ``wrap_context`` makes it; the answer's bytes."""
        rpc = service_method.rsplit("/", 1)[-1]

        async def call(request: bytes, context: Any) -> bytes:
            wrapped = wrap_context(context)
            # Serve's contract: the client's request id, or a new one, sent back as a trailer.
            request_id = wrapped.request_id
            if not request_id:
                request_id = f"{self._id_prefix}-{next(self._ids)}"
                wrapped.set_request_id(request_id)
            context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
            method = getattr(self._user_callable.user_callable, rpc)
            self._metrics.inc_num_ongoing_requests(self._metadata)
            try:
                message = await method(request, wrapped)
            finally:
                self._metrics.dec_num_ongoing_requests(self._metadata)
            return message.SerializeToString()

        return call
