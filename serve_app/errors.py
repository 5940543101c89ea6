"""One error base carrying an HTTP status, raised anywhere and mapped to each protocol's body.

Errors cross Ray actor boundaries (model replica -> ingress), so they must pickle: every
subclass keeps its constructor arguments in ``args``.
"""

from __future__ import annotations


class ServingError(Exception):
    """An error a client should see: a status code and a message naming what was wrong."""

    status_code = 500
    headers: dict[str, str] = {}  # extra response headers (Retry-After, WWW-Authenticate)

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(ServingError):
    """The request body or parameters are wrong (400)."""

    status_code = 400


class NotFound(ServingError):
    """Unknown model, version, label or signature (404)."""

    status_code = 404


class PayloadTooLarge(ServingError):
    """The request body exceeds the configured limit (413)."""

    status_code = 413


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


class Unauthorized(ServingError):
    """Missing or wrong bearer token (401, with ``WWW-Authenticate: Bearer``)."""

    status_code = 401
    headers = {"WWW-Authenticate": 'Bearer realm="serve-app"'}


class ModelLoadError(ServingError):
    """Loading a model's artifact failed; raised from a replica's constructor."""

    status_code = 503


def tfserving_error_body(error: ServingError) -> dict[str, str]:
    """TensorFlow Serving REST error body."""
    return {"error": error.message}
