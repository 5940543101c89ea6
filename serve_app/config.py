"""Strict schema of the application args in ``serve_config.yaml``.

Ray Serve ignores unknown keys silently; we refuse them, naming the key and the model,
so a typo such as ``max_batch_sise`` never turns into a silently ignored setting.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from serve_app.model_names import MAX_MODEL_NAME_CHARS, MODEL_NAME, MODEL_NAME_PATTERN

# Bearer tokens, from the config or the environment: long enough not to be guessed.
MIN_TOKEN_CHARS, MAX_TOKEN_CHARS = 16, 512
# Ray accelerator types: L4, T4, A100, A100-80G, H100, TPU-V5E, ...
ACCELERATOR_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
# Ray node labels (Kubernetes label syntax); a selector value may be negated or a set:
# "cpu", "!gpu", "in(a, b)", "!in(a, b)".
NODE_LABEL_KEY_PATTERN = r"^([a-z0-9.-]+/)?[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$"
NODE_LABEL_SELECTOR_PATTERN = (
    r"^!?(in\([A-Za-z0-9._, -]+\)|[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)$"
)


class ConfigError(ValueError):
    """The application args are invalid; the message names every bad key and model."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VersionPolicy(_Strict):
    """Which versions of a model repository to serve (TF Serving's model_version_policy)."""

    latest: Annotated[int, Field(ge=1)] | None = None
    specific: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] | None = None
    all: Literal[True] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> VersionPolicy:
        chosen = [k for k in ("latest", "specific", "all") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError(
                "version_policy needs exactly one of latest: N, specific: [..], all: true"
                f" (got {', '.join(chosen) or 'none'})"
            )
        return self


class BatchingSpec(_Strict):
    """Dynamic batching: rows (instances) per model call and how long to wait to fill it."""

    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    batch_wait_timeout_s: Annotated[float, Field(ge=0, le=10)] = 0.005


AcceleratorType = Annotated[str, Field(pattern=ACCELERATOR_PATTERN, max_length=63)]
LabelSelector = dict[
    Annotated[str, Field(pattern=NODE_LABEL_KEY_PATTERN, max_length=253)],
    Annotated[str, Field(pattern=NODE_LABEL_SELECTOR_PATTERN, max_length=253)],
]


class ResourceSpec(_Strict):
    """Per-replica resources and placement, passed to Ray as ``ray_actor_options``.

    ``num_gpus`` may be a fraction of one GPU (0.5: two replicas share a card; each replica's
    framework is held to its share of the card's memory). ``accelerator_type`` asks for a node
    with that GPU (Ray's ``accelerator_type:L4`` resource). ``label_selector`` asks for nodes
    with those Ray node labels (``{"node-pool": "cpu"}``, ``{"node-pool": "!gpu"}``).
    ``allow_cpu_fallback`` lets a replica that asked for a GPU run on the CPU, with a warning,
    when its framework sees no CUDA device; without it, that replica fails to load.
    """

    # A small share by default, so a small machine holds many small models (Ray reserves
    # CPUs for scheduling only; a replica computes on whatever cores are free).
    num_cpus: Annotated[float, Field(ge=0)] = 0.1
    num_gpus: Annotated[float, Field(ge=0)] = 0
    memory: Annotated[int, Field(ge=0, description="bytes")] | None = None
    accelerator_type: AcceleratorType | None = None
    label_selector: LabelSelector | None = None
    allow_cpu_fallback: bool = False

    @model_validator(mode="after")
    def _gpu_settings(self) -> ResourceSpec:
        if self.num_gpus > 1 and not float(self.num_gpus).is_integer():
            raise ValueError(
                f"num_gpus above 1 must be a whole number of GPUs (got {self.num_gpus:g})"
            )
        for key in ("accelerator_type", "allow_cpu_fallback"):
            if getattr(self, key) and self.num_gpus <= 0:
                raise ValueError(f"{key} applies only to models with num_gpus > 0")
        return self


class AutoscalingSpec(_Strict):
    """Replica autoscaling, passed to Ray Serve's ``autoscaling_config``."""

    min_replicas: Annotated[int, Field(ge=0)] = 1
    max_replicas: Annotated[int, Field(ge=1)] = 1
    target_ongoing_requests: Annotated[float, Field(gt=0)] | None = None
    # Replicas at start (min_replicas: 0 with initial_replicas: 0 starts at zero).
    initial_replicas: Annotated[int, Field(ge=0)] | None = None
    # How long a scaling decision must hold before it applies (Serve: 30 s up, 600 s down).
    upscale_delay_s: Annotated[float, Field(ge=0)] | None = None
    downscale_delay_s: Annotated[float, Field(ge=0)] | None = None
    # The delay of the last step, from one replica to zero (default: downscale_delay_s).
    downscale_to_zero_delay_s: Annotated[float, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})"
            )
        return self


LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
VersionLabels = dict[Annotated[str, Field(pattern=LABEL_PATTERN, max_length=63)], int]
# How a new version replaces the serving one (TF Serving's version transition policies):
# "availability": load the new one beside the old, swap, then unload (never a gap);
# "resource": unload the old one first (never two in memory; requests wait in the gap).
AVAILABILITY, RESOURCE = "availability", "resource"
SwapPolicy = Literal["availability", "resource"]
# Canary by percentage: version -> weight of the requests that name no version or label.
VersionTraffic = Annotated[
    dict[Annotated[int, Field(ge=0)], Annotated[float, Field(ge=0, le=1e6)]],
    Field(min_length=1, max_length=16),
]


def check_traffic(traffic: dict[int, float] | None, policy: VersionPolicy) -> None:
    """A split must give some version weight, and only to versions the policy can keep."""
    if traffic is None:
        return
    weighted = sorted(v for v, w in traffic.items() if w > 0)
    if not weighted:
        raise ValueError("traffic gives no version any weight (at least one weight above 0)")
    if policy.specific is not None and not set(weighted) <= set(policy.specific):
        missing = sorted(set(weighted) - set(policy.specific))
        raise ValueError(
            f"traffic sends requests to version(s) {missing}, which version_policy"
            f" specific: {policy.specific} does not load"
        )
    if policy.latest is not None and len(weighted) > policy.latest:
        raise ValueError(
            f"traffic splits requests over {len(weighted)} versions, but version_policy"
            f" latest: {policy.latest} keeps only {policy.latest} loaded (raise latest, or"
            " use specific: [...])"
        )


class HotSettings(_Strict):
    """Settings a running replica applies in ``reconfigure`` (Serve's ``user_config``).

    Versions change here too: a replica loads and unloads versions in the background, so
    pinning a version or moving a label never restarts it.
    """

    batching: BatchingSpec = BatchingSpec()
    version_policy: VersionPolicy = VersionPolicy(latest=1)
    labels: VersionLabels = {}
    poll_interval_s: Annotated[float, Field(ge=0, le=86400)] = 0.0
    traffic: VersionTraffic | None = None
    swap_policy: SwapPolicy = AVAILABILITY

    @model_validator(mode="after")
    def _traffic_within_policy(self) -> HotSettings:
        check_traffic(self.traffic, self.version_policy)
        return self


class _ServedSpec(_Strict):
    """What a dedicated model and a pool share: framework, placement, batching, replicas.

    ``framework`` names a registered framework (``deployments/registry.py``); that framework
    says which ``task`` values and ``dtype`` it takes, and validates its own block of
    options, written under its name (``python: {class: ...}``).
    """

    name: Annotated[str, Field(pattern=MODEL_NAME_PATTERN, max_length=MAX_MODEL_NAME_CHARS)]
    framework: str
    uri: Annotated[str, Field(min_length=1)]
    task: Annotated[str, Field(max_length=64)] | None = None
    # The framework's own block, validated by it; written under the framework's name.
    options: dict[str, Any] = Field(default_factory=dict, exclude=True)
    version_policy: VersionPolicy = VersionPolicy(latest=1)
    poll_interval_s: Annotated[float, Field(ge=0, le=86400)] = 0.0
    traffic: VersionTraffic | None = None
    swap_policy: SwapPolicy = AVAILABILITY
    batching: BatchingSpec = BatchingSpec()
    resources: ResourceSpec = ResourceSpec()
    # Frameworks that take it (transformers): the torch dtype weights load in (float32).
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    num_replicas: Annotated[int, Field(ge=1)] | None = None
    autoscaling: AutoscalingSpec | None = None
    max_ongoing_requests: Annotated[int, Field(ge=1)] | None = None
    # Requests waiting for a replica (per caller); past it the model answers 503 / 429.
    # Unset: no bound (Serve's default).
    max_queued_requests: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _framework_options(cls, data: Any) -> Any:
        """Move the framework's block (``python: {...}``) into ``options``, validated by the
        framework; a block of another framework is an error."""
        if not isinstance(data, dict):
            return data
        from deployments.registry import framework_names, servable_class

        names = framework_names()
        framework = data.get("framework")
        if "options" in data:
            raise ValueError(
                "unknown key 'options' (a framework's options go under its name, e.g."
                " python: {class: ...})"
            )
        if framework not in names:
            raise ValueError(
                f"framework must be one of {', '.join(names)} (got {str(framework)[:64]!r})"
            )
        others = [n for n in names if n in data and n != framework]
        if others:
            raise ValueError(
                f"{others[0]}: options of framework '{others[0]}' do not apply to a"
                f" {framework} model"
            )
        data = dict(data)
        block = data.pop(framework, None)
        servable = servable_class(framework)
        if servable.options_model is None:
            if block is not None:
                raise ValueError(f"{framework}: framework '{framework}' takes no options")
            return data
        data["options"] = framework_options(framework, servable.options_model, block)
        return data

    @model_validator(mode="after")
    def _consistent(self) -> _ServedSpec:
        from deployments.registry import servable_class

        servable = servable_class(self.framework)
        tasks = list(servable.tasks)
        if self.task is None and servable.task_required:
            raise ValueError(f"task is required for {self.framework} models (one of {tasks})")
        if self.task is not None and self.task not in tasks:
            if not tasks:
                raise ValueError(
                    f"task applies only to {_frameworks_with('tasks')} models"
                    f" (framework '{self.framework}' takes none)"
                )
            raise ValueError(f"task must be one of {tasks} for {self.framework} models")
        if self.dtype is not None and not servable.takes_dtype:
            raise ValueError(
                f"dtype applies only to {_frameworks_with('takes_dtype')} models (a"
                f" {self.framework} model runs in the dtypes it was saved with)"
            )
        if self.num_replicas is not None and self.autoscaling is not None:
            raise ValueError("set num_replicas or autoscaling, not both")
        check_traffic(self.traffic, self.version_policy)
        return self

    @property
    def capabilities(self) -> frozenset[str]:
        """What the model can do (predict, classify, embed, generate, ...), as its framework
        declares it: the ingress routes by this."""
        from deployments.registry import servable_class

        return servable_class(self.framework).capabilities(self.task, self.options)

    @property
    def json_instances(self) -> bool:
        """Whether TF Serving REST ``instances`` reach the model undecoded (it decodes them
        itself: a Python model's ``preprocess``)."""
        from deployments.registry import servable_class

        return servable_class(self.framework).json_instances

    def framework_block(self) -> dict[str, Any]:
        """The framework's options under its name, as the args write them (or nothing)."""
        return {self.framework: dict(self.options)} if self.options else {}

    @property
    def kind(self) -> str:
        """What the protocols route by: ``tensorflow`` or the transformers task."""
        return self.task or self.framework

    def hot_settings(self) -> HotSettings:
        """The part of the spec that changes in place, through ``user_config``."""
        return HotSettings(
            batching=self.batching,
            version_policy=self.version_policy,
            labels=getattr(self, "labels", {}),
            poll_interval_s=self.poll_interval_s,
            traffic=self.traffic,
            swap_policy=self.swap_policy,
        )

    def effective_max_ongoing_requests(self) -> int:
        """At least two full batches, so a batch can fill while the previous one runs."""
        return self.max_ongoing_requests or max(8, 2 * self.batching.max_batch_size)


class ModelSpec(_ServedSpec):
    """One model of the fleet, in a deployment of its own."""

    labels: VersionLabels = {}

    def load_settings(self) -> dict[str, Any]:
        """The part of the spec a replica needs at start; changing it restarts replicas."""
        settings = self.model_dump(
            include={"name", "framework", "uri", "task", "resources", "dtype"}
        )
        return {**settings, **self.framework_block()}


class PoolSpec(_ServedSpec):
    """A shared pool of replicas serving every model under ``uri`` (model multiplexing).

    Each subdirectory of ``uri`` whose name is a valid model name is one model, with its own
    versions; a replica loads models on demand and keeps at most ``max_models_per_replica``,
    evicting the least recently used.
    """

    max_models_per_replica: Annotated[int, Field(ge=1, le=4096)] = 8
    # Loads that may run at once in one replica; each model loads on its own thread.
    max_concurrent_loads: Annotated[int, Field(ge=1, le=64)] = 4
    # How often the ingress re-lists ``uri`` for new models (a request for a name it does
    # not know also re-lists it, at most once a second).
    discovery_interval_s: Annotated[float, Field(gt=0, le=3600)] = 30.0

    def member_spec(self, model: str) -> ModelSpec:
        """The spec of one model of the pool; ``model`` must already be a checked name."""
        if not MODEL_NAME.fullmatch(model):
            raise ValueError(f"'{model}' is not a valid model name ({MODEL_NAME_PATTERN})")
        base = self.uri.rstrip("/")
        return ModelSpec(
            name=model,
            uri=f"{base}/{model}",
            **self.model_dump(
                include={
                    "framework",
                    "task",
                    "version_policy",
                    "poll_interval_s",
                    "traffic",
                    "swap_policy",
                    "batching",
                    "resources",
                    "dtype",
                }
            ),
            **self.framework_block(),
        )

    def load_settings(self) -> dict[str, Any]:
        """What a pool replica needs at start; changing it restarts the pool's replicas."""
        settings = self.model_dump(
            include={
                "name",
                "framework",
                "uri",
                "task",
                "resources",
                "dtype",
                "max_models_per_replica",
                "max_concurrent_loads",
            }
        )
        return {**settings, **self.framework_block()}


class OverloadSpec(_Strict):
    """What an overloaded model answers (past its ``max_queued_requests``)."""

    status_code: Literal[503, 429] = 503
    retry_after_s: Annotated[int, Field(ge=0, le=3600)] | None = 1


class IngressSpec(_Strict):
    """The HTTP ingress deployment."""

    # 0: the endpoint comes up whatever CPUs the models reserved; a model that cannot be
    # placed answers 503 with the reason, instead of every request hanging.
    num_cpus: Annotated[float, Field(ge=0)] = 0.0
    num_replicas: Annotated[int, Field(ge=1)] = 1
    # Ray node labels the ingress replicas must run on (Ray's label_selector), e.g. the CPU
    # worker group on KubeRay, so that an ingress replica never keeps a GPU node up.
    label_selector: LabelSelector | None = None
    max_request_bytes: Annotated[int, Field(ge=1024)] = 32 * 1024 * 1024
    # Bytes of request bodies held at once by one ingress replica, over all requests; past
    # it a request gets 503 with Retry-After (at least max_request_bytes).
    max_buffered_bytes: Annotated[int, Field(ge=1024)] = 256 * 1024 * 1024
    # Instances (rows, prompts, texts) in one request; more is refused with 413 before dispatch.
    max_instances_per_request: Annotated[int, Field(ge=1)] = 4096
    # Deadline of a model call; the X-Request-Timeout-Seconds header may ask for another one,
    # at most max_request_timeout_s. Past it the request gets 504 and its work is cancelled.
    request_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    max_request_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 300.0
    # An upload that sends no byte of its body for this long gets 408 and its bytes are let
    # go: a client that stops short of its Content-Length would hold its share of
    # max_buffered_bytes for as long as its connection stays open.
    body_idle_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    # Bearer tokens accepted by the model routes (health routes stay open); none: no auth.
    auth_tokens: list[
        Annotated[str, Field(min_length=MIN_TOKEN_CHARS, max_length=MAX_TOKEN_CHARS)]
    ] = []
    # The name of an environment variable (on the ingress replica) holding more tokens,
    # comma-separated, so secrets need not be written in serve_config.yaml.
    auth_tokens_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    # What a model past its max_queued_requests answers: 503, or 429; with Retry-After.
    overload: OverloadSpec = OverloadSpec()
    # One log line per request (method, path, status, latency, model, request id) in the
    # ingress replica's log. Off by default: it costs CPU on every request.
    access_log: bool = False

    @model_validator(mode="after")
    def _timeouts(self) -> IngressSpec:
        if self.max_buffered_bytes < self.max_request_bytes:
            raise ValueError(
                f"max_buffered_bytes ({self.max_buffered_bytes}) is below max_request_bytes"
                f" ({self.max_request_bytes}): no request of the largest size could be read"
            )
        if self.request_timeout_s > self.max_request_timeout_s:
            raise ValueError(
                f"request_timeout_s ({self.request_timeout_s:g}) exceeds max_request_timeout_s"
                f" ({self.max_request_timeout_s:g})"
            )
        return self


class StoreSpec(_Strict):
    """How remote (``gs://``) models are downloaded and cached on each machine.

    ``cache_dir`` unset means ``$SERVE_APP_CACHE_DIR``, else ``~/.cache/serve-app``
    (``$XDG_CACHE_HOME/serve-app``), resolved on the machine where the replica runs.
    ``max_cache_bytes`` unset means no limit.
    """

    cache_dir: Annotated[str, Field(min_length=1)] | None = None
    max_cache_bytes: Annotated[int, Field(ge=0)] | None = None
    download_workers: Annotated[int, Field(ge=1, le=64)] = 8
    retry_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0


class AppConfig(_Strict):
    """The application args: dedicated models and model pools behind one ingress."""

    models: list[ModelSpec] = []
    pools: list[PoolSpec] = []
    ingress: IngressSpec = IngressSpec()
    store: StoreSpec = StoreSpec()

    @model_validator(mode="after")
    def _unique_names(self) -> AppConfig:
        if not self.models and not self.pools:
            raise ValueError("the fleet is empty: give at least one entry in models or pools")
        seen: dict[str, str] = {}
        entries = [("models", m.name) for m in self.models] + [
            ("pools", p.name) for p in self.pools
        ]
        counters = {"models": 0, "pools": 0}
        for field, name in entries:
            where = f"{field}[{counters[field]}]"
            counters[field] += 1
            if name in seen:
                raise ValueError(
                    f"{where}: duplicate model name '{name}', already used by {seen[name]}"
                    " (models and pools share one namespace: each is a deployment)"
                )
            seen[name] = where
        return self


def framework_options(framework: str, model: type[BaseModel], block: Any) -> dict[str, Any]:
    """A framework's options block, validated by its model: the options as a mapping, or a
    ValueError whose lines name each bad key under the framework's name."""
    if block is not None and not isinstance(block, dict):
        raise ValueError(f"{framework}: must be a mapping of {framework} options")
    try:
        return model.model_validate(block or {}).model_dump(by_alias=True, exclude_none=True)
    except ValidationError as exc:
        lines = [
            _describe(
                {**error, "loc": (framework, *error["loc"])}, block, _wrapped(framework, model)
            )
            for error in exc.errors()
        ]
        raise ValueError("; ".join(lines)) from None


def _wrapped(framework: str, model: type[BaseModel]) -> type[BaseModel]:
    """A schema with ``model`` under the key ``framework``, to name its allowed keys."""
    from pydantic import create_model

    return create_model("FrameworkBlock", **{framework: (model, ...)})


def _frameworks_with(attribute: str) -> str:
    """The registered frameworks whose servable declares ``attribute`` (for messages)."""
    from deployments.registry import framework_names, servable_class

    names = [n for n in framework_names() if getattr(servable_class(n), attribute)]
    return " and ".join(names) if len(names) <= 2 else ", ".join(names)


def parse_app_config(args: Any) -> AppConfig:
    """Validate application args, raising ConfigError with one readable line per problem."""
    if not isinstance(args, dict):
        raise ConfigError(f"application args must be a mapping, got {type(args).__name__}")
    try:
        return AppConfig.model_validate(args)
    except ValidationError as exc:
        lines = [_describe(error, args) for error in exc.errors()]
        raise ConfigError("invalid application args:\n  " + "\n  ".join(lines)) from None


class ModelApp(ModelSpec):
    """The args of one model's own application (``serve_app.app:build_model``)."""

    store: StoreSpec = StoreSpec()


class PoolApp(PoolSpec):
    """The args of one pool's own application (``serve_app.app:build_pool``)."""

    store: StoreSpec = StoreSpec()


def parse_model_app(args: Any) -> ModelApp:
    """Validate a model application's args as strictly as the fleet's."""
    return _parse_entry(ModelApp, args, "model")


def parse_pool_app(args: Any) -> PoolApp:
    """Validate a pool application's args as strictly as the fleet's."""
    return _parse_entry(PoolApp, args, "pool")


def parse_ingress_app(args: Any) -> IngressSpec:
    """Validate the ingress application's args (``serve_app.app:build_ingress``)."""
    return _parse_entry(IngressSpec, args or {}, "ingress")


def _parse_entry(root: type[BaseModel], args: Any, kind: str) -> Any:
    if not isinstance(args, dict):
        raise ConfigError(f"{kind} application args must be a mapping, got {type(args).__name__}")
    try:
        return root.model_validate(args)
    except ValidationError as exc:
        name = args.get("name")
        label = f"{kind} '{name}'" if isinstance(name, str) else kind
        lines = [_describe(error, args, root) for error in exc.errors()]
        raise ConfigError(f"invalid {label} application args:\n  " + "\n  ".join(lines)) from None


def parse_hot_settings(
    user_config: Any, model_name: str, base: dict[str, Any] | None = None
) -> HotSettings:
    """Validate a replica's ``user_config`` with the same strictness as the app args.

    ``base`` (the args' hot settings) fills what ``user_config`` leaves out: Serve replaces
    ``user_config`` whole, but an override of ``batching`` should not reset the labels.
    """
    if user_config is not None and not isinstance(user_config, dict):
        raise ConfigError(f"user_config for model '{model_name}' must be a mapping")
    merged = {**(base or {}), **(user_config or {})}
    try:
        return HotSettings.model_validate(merged)
    except ValidationError as exc:
        lines = [_describe(error, user_config, HotSettings) for error in exc.errors()]
        raise ConfigError(
            f"invalid user_config for model '{model_name}':\n  " + "\n  ".join(lines)
        ) from None


def _describe(error: dict, args: Any, root: type[BaseModel] = AppConfig) -> str:
    """One line for a pydantic error: where (with the model's name), what, what is allowed."""
    loc = list(error["loc"])
    where = _format_location(loc, args)
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(root, loc[:-1])
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"{where}: unknown key '{loc[-1]}'{hint}"
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def _format_location(loc: list, args: Any) -> str:
    """``model 'digits' (models[0]): batching.max_batch_size`` style locations."""
    kinds = {"models": "model", "pools": "pool"}
    if len(loc) >= 2 and loc[0] in kinds and isinstance(loc[1], int):
        entries = args.get(loc[0]) if isinstance(args, dict) else None
        entry = entries[loc[1]] if isinstance(entries, list) and loc[1] < len(entries) else None
        name = entry.get("name") if isinstance(entry, dict) else None
        index = f"{loc[0]}[{loc[1]}]"
        label = f"{kinds[loc[0]]} '{name}' ({index})" if isinstance(name, str) else index
        rest = ".".join(str(part) for part in loc[2:])
        return f"{label}: {rest}" if rest else label
    return ".".join(str(part) for part in loc)


def _allowed_keys(root: type[BaseModel], loc: list) -> list[str]:
    """The keys accepted at ``loc``, by walking the schema along it."""
    current: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        fields = {f.alias or n: f for n, f in current.model_fields.items()}
        field = fields.get(str(part))
        if field is None:
            return []
        current = _model_in(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        # Internal fields (a framework's options, written under its name) are not keys.
        fields = current.model_fields.items()
        return [field.alias or name for name, field in fields if not field.exclude]
    return []


def _model_in(annotation: Any) -> Any:
    """The BaseModel inside Optional[...] / list[...] / Annotated[...], if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType, list, Annotated):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
