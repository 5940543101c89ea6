"""gRPC status codes for ``ServingError``s, in one place: TF Serving's for its two services,
Triton's for the Open Inference Protocol's.

Every error carries the HTTP status REST answers with. TF Serving hands its absl codes to gRPC
unchanged and maps them to HTTP for REST (``model_servers/http_server.cc``); read backwards,
that table gives the gRPC code of each status. A TensorFlow error keeps its own code
(``grpc_code``). Triton knows fewer codes (``src/grpc/grpc_utils.cc``): a full queue is
UNAVAILABLE ("Exceeds maximum queue size"), and it has no RESOURCE_EXHAUSTED of its own.
"""

from __future__ import annotations

import grpc

from serve_app.errors import ServingError, UnknownLabel, UnknownSignature

Code = grpc.StatusCode
# HAProxy and HTTP/2 carry the details in a trailer of bounded size.
MAX_DETAILS = 4000

_BY_NUMBER = {code.value[0]: code for code in Code}
_SHARED = {
    400: Code.INVALID_ARGUMENT,
    401: Code.UNAUTHENTICATED,
    403: Code.PERMISSION_DENIED,
    404: Code.NOT_FOUND,
    # Past a size or count limit: what gRPC itself answers past its message size limit.
    413: Code.RESOURCE_EXHAUSTED,
    499: Code.CANCELLED,
    501: Code.UNIMPLEMENTED,
    503: Code.UNAVAILABLE,
    504: Code.DEADLINE_EXCEEDED,
}
TFSERVING = {**_SHARED, 409: Code.ABORTED, 429: Code.RESOURCE_EXHAUSTED}
TRITON = {**_SHARED, 409: Code.ALREADY_EXISTS, 429: Code.UNAVAILABLE}


def tfserving_code(error: ServingError, rpc: str = "") -> grpc.StatusCode:
    """The code TF Serving's gRPC server gives ``error`` in the call ``rpc``."""
    if isinstance(error, UnknownSignature) and rpc == "Predict":
        return Code.FAILED_PRECONDITION  # predict_util.cc; classify and regress: INVALID_ARGUMENT
    if isinstance(error, UnknownLabel):
        return Code.INVALID_ARGUMENT  # "Unrecognized servable version label" (server_core.cc)
    if error.grpc_code is not None:
        return _BY_NUMBER.get(error.grpc_code, Code.UNKNOWN)
    return TFSERVING.get(error.status_code, Code.INTERNAL)


def triton_code(error: ServingError, rpc: str = "") -> grpc.StatusCode:
    """The code Triton's gRPC server gives ``error``."""
    return TRITON.get(error.status_code, Code.INTERNAL)


def details(error: ServingError) -> str:
    """The status details: the error's message, bounded."""
    message = error.message
    return message if len(message) <= MAX_DETAILS else message[: MAX_DETAILS - 12] + "...TRUNCATED"
