"""One error base carrying an HTTP status, raised anywhere and mapped to each protocol's body.

Errors cross Ray actor boundaries (model replica -> ingress), so they must pickle: every
subclass keeps its constructor arguments in ``args``.
"""

from __future__ import annotations


class ServingError(Exception):
    """An error a client should see: a status code and a message naming what was wrong."""

    status_code = 500
    headers: dict[str, str] = {}  # extra response headers (Retry-After, WWW-Authenticate)
    # The canonical status code number (absl's = gRPC's) where the error carries one exactly,
    # a TensorFlow error's own; None: gRPC derives it from status_code (serve_app/grpc/status.py).
    grpc_code: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(ServingError):
    """The request body or parameters are wrong (400)."""

    status_code = 400


class UnknownSignature(InvalidInput):
    """A model has no signature of the name a request gives (400). Its own class because TF
    Serving's gRPC ``Predict`` answers it FAILED_PRECONDITION, not INVALID_ARGUMENT."""


class NotFound(ServingError):
    """Unknown model, version, label or signature (404)."""

    status_code = 404


class MethodNotAllowed(ServingError):
    """A route's path with a method it does not answer (405)."""

    status_code = 405


class UnknownLabel(NotFound):
    """A model has no version label of the name a request gives (404 on REST; TF Serving's
    gRPC answers INVALID_ARGUMENT, "Unrecognized servable version label")."""


class PayloadTooLarge(ServingError):
    """The request body exceeds the configured limit (413)."""

    status_code = 413


class RequestTimeout(ServingError):
    """The client stopped sending its request body (408). The connection is closed after
    the answer: the rest of the body would otherwise be read as the next request."""

    status_code = 408
    headers = {"Connection": "close"}


class ModelUnavailable(ServingError):
    """The model cannot answer now: it failed to load, is loading, or is overloaded (503)."""

    status_code = 503


class Overloaded(ModelUnavailable):
    """The model's queue is full (Serve's backpressure): 503 or 429, with ``Retry-After``."""

    def __init__(
        self, message: str, status_code: int = 503, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message)
        self.args = (message, status_code, retry_after_s)
        self.status_code = status_code
        self.headers = {} if retry_after_s is None else {"Retry-After": str(retry_after_s)}


class DeadlineExceeded(ServingError):
    """The request ran past its deadline; its work was cancelled (504)."""

    status_code = 504

    @classmethod
    def for_model(cls, model: str) -> DeadlineExceeded:
        """The 504 of a model that did not answer in time, naming where deadlines come from."""
        return cls(
            f"model '{model}' did not answer within the request's deadline"
            " (X-Request-Timeout-Seconds or ingress.request_timeout_s)"
        )

    @classmethod
    def reading_fleet(cls, model: str) -> DeadlineExceeded:
        """The 504 of a request whose deadline passed while Serve's controller was still
        answering where ``model`` is served (the name was not in the view in hand)."""
        return cls(
            f"the request's deadline passed while Serve's controller was still answering"
            f" where model '{model}' is served; retry with a longer deadline"
            " (X-Request-Timeout-Seconds or ingress.request_timeout_s)"
        )


class Unauthorized(ServingError):
    """Missing or wrong bearer token (401, with ``WWW-Authenticate: Bearer``)."""

    status_code = 401
    headers = {"WWW-Authenticate": 'Bearer realm="serve-app"'}


class Unimplemented(ServingError):
    """A call this server does not offer, such as a MultiInference task that is neither
    classify nor regress (501; gRPC UNIMPLEMENTED)."""

    status_code = 501


class ModelLoadError(ServingError):
    """Loading a model's artifact failed; raised from a replica's constructor."""

    status_code = 503


def tfserving_error_body(error: ServingError) -> dict[str, str]:
    """TensorFlow Serving REST error body."""
    return {"error": error.message}
