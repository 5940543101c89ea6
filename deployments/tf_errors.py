"""TensorFlow's error codes as the serving errors TF Serving turns them into.

A model call fails with TensorFlow's own status (``tf.errors.OpError.error_code``, the
absl canonical code). TF Serving passes that status to the client and its REST server maps
it to HTTP (``model_servers/http_server.cc``: ``ToHTTPStatusCode``); this is that table.
"""

from __future__ import annotations

from typing import Any

from serve_app.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelUnavailable,
    NotFound,
    Overloaded,
    ServingError,
)

# absl::StatusCode numbers (tensorflow/core/protobuf/error_codes.proto).
CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND = 1, 2, 3, 4, 5
ALREADY_EXISTS, PERMISSION_DENIED, RESOURCE_EXHAUSTED, FAILED_PRECONDITION = 6, 7, 8, 9
ABORTED, OUT_OF_RANGE, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS = 10, 11, 12, 13, 14, 15
UNAUTHENTICATED = 16

# TF Serving's HTTP status for each code; codes not listed are 500, as there.
HTTP_STATUS = {
    CANCELLED: 499,
    INVALID_ARGUMENT: 400,
    DEADLINE_EXCEEDED: 504,
    NOT_FOUND: 404,
    ALREADY_EXISTS: 409,
    PERMISSION_DENIED: 403,
    RESOURCE_EXHAUSTED: 429,
    FAILED_PRECONDITION: 400,
    ABORTED: 409,
    OUT_OF_RANGE: 400,
    UNIMPLEMENTED: 501,
    UNAVAILABLE: 503,
    UNAUTHENTICATED: 401,
}


class TensorFlowError(ServingError):
    """A model call's TensorFlow error, with the HTTP status TF Serving gives its code."""

    def __init__(self, message: str, status_code: int = 500) -> None:
        super().__init__(message)
        self.args = (message, status_code)  # errors cross actor boundaries: keep them picklable
        self.status_code = status_code


def serving_error(model: str, signature: str, exc: Any) -> ServingError:
    """The client's error for a ``tf.errors.OpError`` raised by one model call."""
    code = getattr(exc, "error_code", UNKNOWN)
    error = _serving_error(f"model '{model}' signature '{signature}': {op_error_text(exc)}", code)
    # gRPC clients get TensorFlow's own code, as TF Serving passes it on.
    error.grpc_code = code
    return error


def _serving_error(message: str, code: int) -> ServingError:
    status = HTTP_STATUS.get(code, 500)
    # The project's own classes where one has that status, so every layer sees the usual type.
    if status == 400:
        return InvalidInput(message)
    if status == 404:
        return NotFound(message)
    if status == 429:
        return Overloaded(message, status_code=429)
    if status == 503:
        return ModelUnavailable(message)
    if status == 504:
        return DeadlineExceeded(message)
    return TensorFlowError(message, status)


def op_error_text(exc: Any) -> str:
    """TensorFlow's reason, without what is not for clients: the node trailer
    (``[[{{node ...}}]]``), "Graph execution error", and where the node was defined (a stack
    trace when the graph was built in this process)."""
    text = str(getattr(exc, "message", "") or exc).split("\n\t [[", 1)[0]
    kept = [
        line.strip()
        for line in text.splitlines()
        if line.strip()
        and not line.startswith(("  ", "Graph execution error", "Detected at node", "Node: "))
        and line.strip() != "<stack traces unavailable>"
    ]
    return " ".join(kept)
