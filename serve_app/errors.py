"""One error base carrying an HTTP status, raised anywhere and mapped to each protocol's body.

Errors cross Ray actor boundaries (model replica -> ingress), so they must pickle: every
subclass keeps its constructor arguments in ``args``.
"""

from __future__ import annotations


class ServingError(Exception):
    """An error a client should see: a status code and a message naming what was wrong."""

    status_code = 500

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


class ModelLoadError(ServingError):
    """Loading a model's artifact failed; raised from a replica's constructor."""

    status_code = 503


def tfserving_error_body(error: ServingError) -> dict[str, str]:
    """TensorFlow Serving REST error body."""
    return {"error": error.message}
