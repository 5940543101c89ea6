"""gRPC status codes of serving errors: TF Serving's for its services, Triton's for OIP."""

from __future__ import annotations

import grpc
import pytest

from deployments.tf_errors import serving_error
from serve_app.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelUnavailable,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    ServingError,
    Unauthorized,
    Unimplemented,
    UnknownLabel,
    UnknownSignature,
)
from serve_app.grpc.status import MAX_DETAILS, details, tfserving_code, triton_code

Code = grpc.StatusCode


@pytest.mark.parametrize(
    ("error", "tfserving", "triton"),
    [
        (InvalidInput("x"), Code.INVALID_ARGUMENT, Code.INVALID_ARGUMENT),
        (NotFound("x"), Code.NOT_FOUND, Code.NOT_FOUND),
        (UnknownLabel("x"), Code.INVALID_ARGUMENT, Code.NOT_FOUND),
        (PayloadTooLarge("x"), Code.RESOURCE_EXHAUSTED, Code.RESOURCE_EXHAUSTED),
        (Unauthorized("x"), Code.UNAUTHENTICATED, Code.UNAUTHENTICATED),
        (ModelUnavailable("x"), Code.UNAVAILABLE, Code.UNAVAILABLE),
        (Overloaded("x", 503), Code.UNAVAILABLE, Code.UNAVAILABLE),
        # A full queue answered 429 on REST: TF Serving's code for it; Triton has none.
        (Overloaded("x", 429), Code.RESOURCE_EXHAUSTED, Code.UNAVAILABLE),
        (DeadlineExceeded("x"), Code.DEADLINE_EXCEEDED, Code.DEADLINE_EXCEEDED),
        (Unimplemented("x"), Code.UNIMPLEMENTED, Code.UNIMPLEMENTED),
        (ServingError("x"), Code.INTERNAL, Code.INTERNAL),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None,
)
def test_codes_by_error(error: ServingError, tfserving: Code, triton: Code) -> None:
    assert tfserving_code(error, "Classify") == tfserving
    assert triton_code(error, "ModelInfer") == triton


def test_an_unknown_signature_is_failed_precondition_only_in_predict() -> None:
    # predict_util.cc answers FailedPrecondition; classifier.cc InvalidArgument.
    error = UnknownSignature("model 'm' has no signature 'nope'")
    assert tfserving_code(error, "Predict") == Code.FAILED_PRECONDITION
    assert tfserving_code(error, "Classify") == Code.INVALID_ARGUMENT
    assert tfserving_code(error, "MultiInference") == Code.INVALID_ARGUMENT
    assert triton_code(error, "ModelInfer") == Code.INVALID_ARGUMENT


class OpError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__("boom")
        self.error_code = code
        self.message = "boom"


@pytest.mark.parametrize(
    ("absl", "code"),
    [
        (3, Code.INVALID_ARGUMENT),
        (9, Code.FAILED_PRECONDITION),
        (11, Code.OUT_OF_RANGE),
        (8, Code.RESOURCE_EXHAUSTED),
        (13, Code.INTERNAL),
        (2, Code.UNKNOWN),
    ],
)
def test_a_tensorflow_error_keeps_its_own_code_over_grpc(absl: int, code: Code) -> None:
    error = serving_error("m", "serving_default", OpError(absl))
    assert tfserving_code(error, "Predict") == code


def test_details_are_the_message_bounded() -> None:
    assert details(InvalidInput("input 'x' is wrong")) == "input 'x' is wrong"
    long = details(InvalidInput("y" * 10_000))
    assert len(long) == MAX_DETAILS and long.endswith("...TRUNCATED")
