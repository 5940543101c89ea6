"""TF Serving's model warm-up: replay the SavedModel's recorded requests before it serves.

A SavedModel may ship ``assets.extra/tf_serving_warmup_requests``, a TFRecord file of
``tensorflow.serving.PredictionLog``s. TF Serving replays each record (predict, classify,
regress and multi-inference logs; ``num_request_iterations`` times each, 1 by default)
before the version becomes AVAILABLE, and a bad file fails that version's load
(``servables/tensorflow/saved_model_warmup*.cc``). So does this module: the record's model
name and version are ignored, its signature name and tensors are used, and the requests go
through the same checks and calls as a client's.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deployments.signature import prepare_inputs, requested_outputs
from deployments.tf_signatures import (
    CLASSIFY_METHOD,
    REGRESS_METHOD,
    check_example_signature,
    serialized_examples,
)
from serve_app.errors import ModelLoadError, ServingError

ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
MAX_RECORDS = 1000  # TF Serving's WarmupConsts::kMaxNumRecords


class WarmupError(ServingError):
    """A warm-up record that TF Serving would refuse (the load fails with it)."""


def warmup_file(export_dir: Path) -> Path:
    """Where a SavedModel keeps its warm-up requests."""
    return export_dir / ASSETS_EXTRA / WARMUP_FILE


def replay_warmup(servable: Any, export_dir: Path, iterations: int = 1) -> int:
    """Replay every warm-up record ``iterations`` times on a loaded TensorFlow servable.

    Returns the number of records; raises ``ModelLoadError`` naming the file, the record and
    the reason when a record cannot be read or its request fails.
    """
    path = warmup_file(export_dir)
    where = f"{ASSETS_EXTRA}/{WARMUP_FILE} of version directory '{export_dir.name}'"
    count = 0
    try:
        for record in _records(path):
            if count >= MAX_RECORDS:
                raise WarmupError(f"it has more than {MAX_RECORDS} records, TF Serving's maximum")
            count += 1
            log = _parse(record)
            for _ in range(iterations):
                _replay(servable, log)
    except ServingError as exc:
        at = f"record {count}: " if count else ""
        raise ModelLoadError(
            f"model '{servable.name}': warm-up file {where} failed, {at}{exc}"
        ) from None
    return count


def _records(path: Path) -> Iterator[bytes]:
    """The file's TFRecords, each length and payload checked against its masked CRC32C.

    Read here rather than with tf.data, which takes a truncated header for the end of the
    file; TF Serving's record reader calls it data loss, and so does this.
    """
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
        header = data[offset : offset + 12]
        if len(header) < 12:
            raise _not_tfrecords(f"truncated record at {offset}")
        (length,) = struct.unpack("<Q", header[:8])
        if struct.unpack("<I", header[8:])[0] != _masked_crc(header[:8]):
            raise _not_tfrecords(f"corrupted record at {offset}")
        payload = data[offset + 12 : offset + 12 + length]
        footer = data[offset + 12 + length : offset + 16 + length]
        if len(payload) < length or len(footer) < 4:
            raise _not_tfrecords(f"truncated record at {offset}")
        if struct.unpack("<I", footer)[0] != _masked_crc(payload):
            raise _not_tfrecords(f"corrupted record at {offset}")
        yield payload
        offset += 16 + length


def _masked_crc(data: bytes) -> int:
    """TFRecord's checksum: CRC32C, rotated and offset (tensorflow/core/lib/hash/crc32c.h)."""
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _not_tfrecords(reason: str) -> WarmupError:
    return WarmupError(f"{reason}. Please verify your warmup data is in TFRecord format")


def _parse(record: bytes) -> Any:
    from google.protobuf.message import DecodeError
    from tensorflow_serving.apis import prediction_log_pb2

    log = prediction_log_pb2.PredictionLog()
    try:
        log.ParseFromString(record)
    except DecodeError:
        raise WarmupError("the record is not a tensorflow.serving.PredictionLog") from None
    return log


def _replay(servable: Any, log: Any) -> None:
    """Run one PredictionLog's request on the servable, as TF Serving's RunWarmupRequest."""
    kind = log.WhichOneof("log_type")
    if kind == "predict_log":
        _predict(servable, log.predict_log.request)
    elif kind in ("classify_log", "regress_log"):
        request = getattr(log, kind).request
        method = kind.removesuffix("_log")
        _examples(servable, request.model_spec.signature_name, method, request.input)
    elif kind == "multi_inference_log":
        request = log.multi_inference_log.request
        for task in request.tasks:
            if task.method_name not in (CLASSIFY_METHOD, REGRESS_METHOD):
                raise WarmupError(
                    f"multi_inference task method_name '{task.method_name}' is not supported"
                    f" (expected {CLASSIFY_METHOD} or {REGRESS_METHOD})"
                )
            method = task.method_name.rsplit("/", 1)[1]
            _examples(servable, task.model_spec.signature_name, method, request.input)
    elif kind is not None:
        # session_run_log, predict_streamed_log: TF Serving answers UNIMPLEMENTED too.
        raise WarmupError(f"unsupported log_type for warm-up: {kind}")


def _predict(servable: Any, request: Any) -> None:
    import tensorflow as tf

    signature = servable.signature(request.model_spec.signature_name)
    raw: dict[str | None, Any] = {}
    for name, proto in request.inputs.items():
        try:
            raw[name] = tf.make_ndarray(proto)
        except Exception as exc:  # a TensorProto TF cannot read
            raise WarmupError(f"input '{name}' is not a valid TensorProto: {exc}") from None
    requested_outputs(signature, list(request.output_filter) or None)
    # The TensorProtos carry dtypes: they must be the signature's, as the session requires.
    _run(servable, signature, raw, exact_dtypes=True)


def _examples(servable: Any, signature_name: str, method: str, input_proto: Any) -> None:
    signature = servable.signature(signature_name)
    check_example_signature(servable.name, signature, method)
    _run(servable, signature, serialized_examples(_serialized(input_proto)))


def _serialized(input_proto: Any) -> list[bytes]:
    """TF Serving's serialized Examples of an ``Input``: a context is prepended to each."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        return [e.SerializeToString() for e in input_proto.example_list.examples]
    if kind == "example_list_with_context":
        listed = input_proto.example_list_with_context
        context = listed.context.SerializeToString()
        return [context + e.SerializeToString() for e in listed.examples]
    return []


def _run(servable: Any, signature: Any, raw: dict, exact_dtypes: bool = False) -> None:
    prepared = prepare_inputs(signature, raw, exact_dtypes)
    servable.check_request(prepared.tensors, {})
    servable.infer(signature.name, prepared.tensors, {})
