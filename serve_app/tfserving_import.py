"""TF Serving's model config and batching parameters, turned into this project's Serve config.

``serve-app import-tfserving --model-config models.config [--batching-config batching.config]``
reads TF Serving's text protos with TF Serving's own message definitions, maps every
setting that has an equivalent, notes the tuning knobs that have none (they change speed,
not answers), and refuses what it cannot express: the message says which setting and why.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from serve_app.builders import INGRESS_BUILDER, MODEL_BUILDER
from serve_app.config import ConfigError, parse_app_config
from serve_app.model_names import MODEL_NAME, MODEL_NAME_PATTERN

TENSORFLOW_PLATFORM = "tensorflow"
# ${NAME} in base_path: TF Serving's own example config is a template with these.
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# BatchingParameters fields (session_bundle_config.proto), in its order, with their wrappers.
_BATCHING_FIELDS = (
    ("max_batch_size", 1, "Int64Value"),
    ("batch_timeout_micros", 2, "Int64Value"),
    ("max_enqueued_batches", 3, "Int64Value"),
    ("num_batch_threads", 4, "Int64Value"),
    ("thread_pool_name", 5, "StringValue"),
    ("enable_large_batch_splitting", 8, "BoolValue"),
    ("max_execution_batch_size", 9, "Int64Value"),
)


class ImportRefused(ValueError):
    """The TF Serving config says something this project cannot express."""


@dataclass
class Imported:
    """The Serve config's application args, and notes on what was left out and why."""

    args: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def import_tfserving(
    model_config: str,
    batching_config: str | None = None,
    poll_interval_s: float = 1.0,
    environ: dict[str, str] | None = None,
) -> Imported:
    """TF Serving's ``--model_config_file`` (and ``--batching_parameters_file``) text as the
    ``args`` of this project's application.

    ``poll_interval_s`` is TF Serving's ``--file_system_poll_wait_seconds`` (1 by default
    there: new versions are picked up within a second). ``${NAME}`` in a base path is taken
    from ``environ`` (default: the process environment).
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(model_config, config)
    except text_format.ParseError as exc:
        raise ImportRefused(f"model config: not a ModelServerConfig text proto: {exc}") from None
    if config.WhichOneof("config") != "model_config_list":
        raise ImportRefused(
            "model config: only model_config_list can be imported (custom_model_config is"
            " TF Serving's extension point for other servable kinds)"
        )
    if not config.model_config_list.config:
        raise ImportRefused("model config: model_config_list has no config entries")
    notes: list[str] = []
    batching: dict[str, Any] = {}
    if batching_config is not None:
        batching = _batching(batching_config, notes)
    env = dict(os.environ if environ is None else environ)
    models = [
        _model(entry, index, poll_interval_s, env, batching)
        for index, entry in enumerate(config.model_config_list.config)
    ]
    args = {"models": models}
    try:
        parse_app_config(args)  # the output must be a config this project accepts
    except ConfigError as exc:
        raise ImportRefused(f"the imported models are not a valid fleet: {exc}") from None
    return Imported(args, notes)


def _model(
    entry: Any, index: int, poll_interval_s: float, env: dict[str, str], batching: dict
) -> dict[str, Any]:
    where = f"config[{index}] (name '{entry.name}')"
    if not MODEL_NAME.fullmatch(entry.name):
        raise ImportRefused(
            f"{where}: model names here must match {MODEL_NAME_PATTERN}; renaming it would"
            " change the URLs its clients call, so rename it in TF Serving's config first"
        )
    _check_platform(entry, where)
    if entry.HasField("logging_config"):
        raise ImportRefused(
            f"{where}: logging_config (request logging to files) has no equivalent here;"
            " remove it (the ingress has an access log and Prometheus metrics instead)"
        )
    model: dict[str, Any] = {
        "name": entry.name,
        "framework": TENSORFLOW_PLATFORM,
        "uri": _uri(entry.base_path, where, env),
    }
    policy = _version_policy(entry.model_version_policy)
    if policy != {"latest": 1}:
        model["version_policy"] = policy
    if entry.version_labels:
        model["labels"] = dict(sorted(entry.version_labels.items()))
    if poll_interval_s:
        model["poll_interval_s"] = poll_interval_s
    model.update(copy.deepcopy(batching))  # no YAML anchors: each model reads alone
    return model


def _check_platform(entry: Any, where: str) -> None:
    """TF Serving's GetPlatform: model_platform, or the deprecated model_type, not both."""
    from tensorflow_serving.config import model_server_config_pb2

    if entry.model_type != model_server_config_pb2.MODEL_TYPE_UNSPECIFIED:
        if entry.model_platform:
            raise ImportRefused(f"{where}: sets both model_type (deprecated) and model_platform")
        if entry.model_type != model_server_config_pb2.TENSORFLOW:
            raise ImportRefused(f"{where}: model_type OTHER is not supported (only TENSORFLOW)")
        return
    if entry.model_platform != TENSORFLOW_PLATFORM:
        raise ImportRefused(
            f"{where}: model_platform '{entry.model_platform}' cannot be imported; only"
            f" '{TENSORFLOW_PLATFORM}' (SavedModels) is served by TF Serving's rules here"
        )


def _uri(base_path: str, where: str, env: dict[str, str]) -> str:
    """A local path or gs:// URI; ${NAME} filled from the environment."""

    def substitute(match: re.Match) -> str:
        if match[1] not in env:
            raise ImportRefused(
                f"{where}: base_path '{base_path}' names ${{{match[1]}}}, which is not set"
            )
        return env[match[1]]

    uri = _VARIABLE.sub(substitute, base_path)
    if not uri:
        raise ImportRefused(f"{where}: base_path is empty")
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme not in ("", "gs"):
        raise ImportRefused(
            f"{where}: base_path '{uri}' uses {scheme}://; the model store reads local"
            " directories and gs:// only"
        )
    return uri


def _version_policy(policy: Any) -> dict[str, Any]:
    """TF Serving's ServableVersionPolicy (default: the latest version)."""
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return {"all": True}
    if kind == "specific":
        if not policy.specific.versions:
            raise ImportRefused("model_version_policy specific lists no versions")
        return {"specific": sorted(set(policy.specific.versions))}
    # latest, or unset; num_versions 0 means TF Serving's default of 1.
    return {"latest": policy.latest.num_versions or 1}


def batching_parameters_class() -> Any:
    """TF Serving's ``BatchingParameters`` message (``session_bundle_config.proto``).

    tensorflow-serving-api ships no Python module for it, so its descriptor is built here,
    field for field (names, numbers, types), in a pool of its own.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    proto = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/session_bundle_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=[wrappers.name],
    )
    message = proto.message_type.add(name="BatchingParameters")
    field_type = descriptor_pb2.FieldDescriptorProto
    for name, number, wrapper in _BATCHING_FIELDS:
        message.field.add(
            name=name,
            number=number,
            type=field_type.TYPE_MESSAGE,
            type_name=f".google.protobuf.{wrapper}",
            label=field_type.LABEL_OPTIONAL,
        )
    message.field.add(
        name="allowed_batch_sizes",
        number=6,
        type=field_type.TYPE_INT64,
        label=field_type.LABEL_REPEATED,
    )
    message.field.add(
        name="pad_variable_length_inputs",
        number=7,
        type=field_type.TYPE_BOOL,
        label=field_type.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(wrappers)
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    )


def _batching(text: str, notes: list[str]) -> dict[str, Any]:
    """TF Serving's batching parameters as each model's keys; notes for the knobs without one."""
    from google.protobuf import text_format

    params = batching_parameters_class()()
    try:
        text_format.Parse(text, params)
    except text_format.ParseError as exc:
        raise ImportRefused(
            f"batching config: not a BatchingParameters text proto: {exc}"
        ) from None
    batching: dict[str, Any] = {}
    size = params.max_batch_size.value if params.HasField("max_batch_size") else None
    if params.HasField("max_execution_batch_size"):
        # With splitting, this is the size of a model call; max_batch_size bounds a request.
        size = params.max_execution_batch_size.value
        notes.append(
            "max_execution_batch_size is the batch size here; requests larger than a batch are"
            " always split into batches (max_batch_size does not refuse them)"
        )
    if size is not None:
        if not 1 <= size <= 4096:
            raise ImportRefused(f"batching config: a batch size of {size} is not in 1..4096")
        batching["max_batch_size"] = size
    if params.HasField("batch_timeout_micros"):
        micros = params.batch_timeout_micros.value
        if not 0 <= micros <= 10_000_000:
            raise ImportRefused(
                f"batching config: batch_timeout_micros {micros} is not in 0..10000000 (10 s)"
            )
        batching["batch_wait_timeout_s"] = micros / 1e6
    out: dict[str, Any] = {"batching": batching} if batching else {}
    if params.HasField("max_enqueued_batches"):
        # TF Serving bounds its queue in batches; here the bound is in requests.
        queued = params.max_enqueued_batches.value * batching.get("max_batch_size", 32)
        if queued < 1:
            raise ImportRefused("batching config: max_enqueued_batches must be at least 1")
        out["max_queued_requests"] = queued
        notes.append(
            f"max_enqueued_batches became max_queued_requests: {queued} (batches x batch size);"
            " past it a model answers 503, as TF Serving answers UNAVAILABLE"
        )
    ignored = {
        "num_batch_threads": "a replica runs one batch at a time; add replicas"
        " (num_replicas or autoscaling) for batches in parallel",
        "thread_pool_name": "no named thread pools here",
        "enable_large_batch_splitting": "requests larger than a batch are always split",
        "allowed_batch_sizes": "batches are not padded to allowed sizes (answers are the same)",
        "pad_variable_length_inputs": "requests of different row shapes run in separate model"
        " calls instead of being padded (answers are the same or closer to unbatched ones)",
    }
    for name, why in ignored.items():
        descriptor = params.DESCRIPTOR.fields_by_name[name]
        wrapped = descriptor.message_type is not None
        if params.HasField(name) if wrapped else getattr(params, name):
            notes.append(f"{name} is not carried over: {why}")
    return out


def render(imported: Imported, source: str, http_port: int = 8000, grpc_port: int = 9000) -> str:
    """A complete serve_config.yaml in the default layout: an ingress application and one
    application per imported model, with TF Serving's gRPC services (and the Open Inference
    Protocol's) on ``grpc_port``."""
    from serve_app.fleet_file import check_fleet
    from serve_app.grpc.services import SERVICER_FUNCTIONS

    header = [f"# Imported from TF Serving's {source} by `serve-app import-tfserving`."]
    header += [f"# note: {note}" for note in imported.notes]
    config = {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": http_port},
        "grpc_options": {"port": grpc_port, "grpc_servicer_functions": SERVICER_FUNCTIONS},
        "applications": [
            {"name": "ingress", "route_prefix": "/", "import_path": INGRESS_BUILDER, "args": {}},
            *(
                {
                    "name": model["name"],
                    "route_prefix": None,
                    "import_path": MODEL_BUILDER,
                    "args": model,
                }
                for model in imported.args["models"]
            ),
        ],
    }
    problems = check_fleet(config).problems
    if problems:
        raise ImportRefused("the imported fleet is not valid: " + "; ".join(problems))
    return "\n".join(header) + "\n" + yaml.safe_dump(config, sort_keys=False)
