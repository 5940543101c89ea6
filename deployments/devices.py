"""Where a replica's model runs: the GPU share Ray reserved for it, or the CPU.

Ray schedules a replica that asks for ``num_gpus`` onto a node with that much GPU left and
sets ``CUDA_VISIBLE_DEVICES`` to the GPU(s) it reserved. A fractional share (``0.5``) is a
scheduling reservation only: nothing stops a process from using the whole card (ray#41432),
and TensorFlow takes all of a GPU's memory by default (ray#13680). So, once per replica,
before the framework touches a GPU:

* TensorFlow gets a hard memory limit of its share (``set_logical_device_configuration``),
  or memory growth when it owns whole GPUs or the card's size is unknown; a replica that
  asked for no GPU gets none, even on a GPU node where Ray leaves every GPU visible.
* torch runs on ``cuda:0`` (the first GPU Ray assigned), in the configured dtype, with its
  caching allocator capped at the share (``set_per_process_memory_fraction``).
* A replica that asked for a GPU but whose framework sees no CUDA device fails with a message
  that says so, unless ``resources.allow_cpu_fallback`` is set: then it logs that it runs on
  the CPU instead.

Each setup runs once per process (a replica is one process; a replica that loads several
versions of its model reuses the first setup), and ``placement_report`` tells
``model_stats`` what it chose.

"Visible" means the framework itself sees a CUDA device (``torch.cuda.is_available()``,
``tf.config.list_physical_devices("GPU")``), not that Ray set ``CUDA_VISIBLE_DEVICES``: Ray
sets it for a GPU that is only a declared resource (``ray start --num-gpus 1`` on a CPU
machine), and for a framework built without CUDA.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from serve_app.config import ResourceSpec
from serve_app.errors import ModelLoadError

logger = logging.getLogger("ray.serve")

CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
# Left outside a fractional replica's memory limit for its CUDA context, cuDNN/cuBLAS
# workspaces and allocator slack, which no framework limit counts.
CONTEXT_RESERVE_MIB = 512
DEFAULT_DTYPE = "float32"


@dataclass
class DeviceInfo:
    """What a replica runs on, reported in ``model_stats`` under ``placement``."""

    device: str  # "cuda:0", "GPU:0" or "cpu"
    framework: str
    dtype: str | None = None
    memory_policy: str = "none"  # "limit", "growth", "fraction", "hidden" or "none"
    memory_limit_mib: int | None = None
    fallback_reason: str | None = None
    memory_in_use: Callable[[], dict[str, int]] | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "device": self.device,
            "framework": self.framework,
            "dtype": self.dtype,
            "memory_policy": self.memory_policy,
            "memory_limit_mib": self.memory_limit_mib,
            "cpu_fallback": self.fallback_reason,
        }
        if self.memory_in_use is not None:
            try:
                report["gpu_memory_mib"] = self.memory_in_use()
            except Exception as exc:  # statistics must never fail a stats call
                report["gpu_memory_mib"] = {"error": f"{type(exc).__name__}: {exc}"}
        return report


# --- pure helpers ------------------------------------------------------------------------


def visible_device_ids(value: str | None) -> list[str]:
    """The entries of a ``CUDA_VISIBLE_DEVICES`` value (indices or ``GPU-...`` UUIDs)."""
    if value is None:
        return []
    return [part.strip() for part in value.split(",") if part.strip()]


def memory_limit_mib(share: float, total_mib: int | None) -> int | None:
    """The memory a replica holding ``share`` of a GPU of ``total_mib`` may use, or None.

    None means no limit: a replica with one or more whole GPUs, or a card of unknown size.
    The limit is the share of the card less ``CONTEXT_RESERVE_MIB``, and never below half
    the share, so that two 0.5-GPU replicas fit on one card together with their contexts.
    """
    if share >= 1 or share <= 0 or not total_mib:
        return None
    portion = share * total_mib
    return int(max(portion - CONTEXT_RESERVE_MIB, portion / 2))


def parse_nvidia_smi(output: str) -> dict[str, int]:
    """``nvidia-smi --query-gpu=index,uuid,memory.total --format=csv,noheader,nounits``
    output -> total MiB by index and by UUID."""
    totals: dict[str, int] = {}
    for line in output.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) != 3 or not parts[2].isdigit():
            continue
        index, uuid, total = parts
        totals[index] = int(total)
        totals[uuid] = int(total)
    return totals


def gpu_total_mib(
    visible: list[str], totals: dict[str, int], physical_count: int | None = None
) -> int | None:
    """The smallest total memory of the visible GPUs, from a by-index/UUID table.

    With ``CUDA_VISIBLE_DEVICES`` unset, every GPU in the table is visible.
    """
    if not visible:
        indices = [key for key in totals if key.isdigit()]
        if physical_count is not None:
            indices = indices[:physical_count]
        visible = indices
    sizes = [totals[gpu] for gpu in visible if gpu in totals]
    return min(sizes) if sizes and len(sizes) == len(visible) else None


def no_gpu_message(
    model: str,
    resources: ResourceSpec,
    framework: str,
    reason: str,
    cuda_visible_devices: str | None,
) -> str:
    """Why a replica that asked for a GPU cannot have one, and what to do about it."""
    assigned = (
        f"Ray reserved GPU {cuda_visible_devices} for it"
        f" (CUDA_VISIBLE_DEVICES={cuda_visible_devices})"
        if cuda_visible_devices
        else "CUDA_VISIBLE_DEVICES is not set"
    )
    return (
        f"model '{model}' asked for num_gpus={resources.num_gpus:g} and {assigned}, but"
        f" {framework} sees no CUDA device: {reason}. Run it on a node with an NVIDIA GPU and"
        f" the CUDA build of {framework} (see the Dockerfile), or set"
        " resources.allow_cpu_fallback: true to run it on the CPU"
    )


def choose_device(
    model: str,
    resources: ResourceSpec,
    framework: str,
    gpu_count: int,
    reason: str,
    cuda_visible_devices: str | None,
) -> str | None:
    """ "gpu" when the model asked for a GPU and the framework sees one; "cpu" when it asked
    for none; None for a CPU fallback. Raises ModelLoadError when there is no fallback."""
    if resources.num_gpus <= 0:
        return "cpu"
    if gpu_count > 0:
        return "gpu"
    message = no_gpu_message(model, resources, framework, reason, cuda_visible_devices)
    if not resources.allow_cpu_fallback:
        raise ModelLoadError(message)
    return None


# --- the machine and Ray ------------------------------------------------------------------


def total_gpu_memory_mib() -> int | None:
    """Total memory of the smallest GPU this process may use: pynvml, else nvidia-smi."""
    visible = visible_device_ids(os.environ.get(CUDA_VISIBLE_DEVICES))
    totals = _nvml_totals()
    if totals is None:
        totals = _nvidia_smi_totals()
    return gpu_total_mib(visible, totals) if totals else None


def _nvml_totals() -> dict[str, int] | None:
    try:
        import pynvml  # nvidia-ml-py, in the gpu extra
    except ImportError:
        try:  # the copy Ray ships for its own GPU detection
            from ray._private.thirdparty.pynvml import pynvml
        except ImportError:
            return None
    try:
        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        totals: dict[str, int] = {}
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            total = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total) // 2**20
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            totals[str(index)] = total
            totals[uuid.decode() if isinstance(uuid, bytes) else str(uuid)] = total
        return totals
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _nvidia_smi_totals() -> dict[str, int] | None:
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return None
    query = [binary, "--query-gpu=index,uuid,memory.total", "--format=csv,noheader,nounits"]
    try:
        result = subprocess.run(query, capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_nvidia_smi(result.stdout) or None


def ray_placement() -> dict[str, Any]:
    """What Ray assigned to this replica: node, GPU ids, CUDA_VISIBLE_DEVICES, resources."""
    report: dict[str, Any] = {CUDA_VISIBLE_DEVICES: os.environ.get(CUDA_VISIBLE_DEVICES)}
    import ray

    # Outside Ray (a model called in-process) there is nothing to ask, and asking would
    # start a local Ray instance.
    if not ray.is_initialized():
        report.update(node_id=None, gpu_ids=[], assigned_resources={})
        return report
    context = ray.get_runtime_context()
    report["node_id"] = context.get_node_id()
    report["gpu_ids"] = [str(gpu) for gpu in ray.get_gpu_ids()]
    try:
        report["assigned_resources"] = context.get_assigned_resources()
    except AssertionError:  # a driver (not a replica) has no assigned resources
        report["assigned_resources"] = {}
    return report


# What this process's model runs on, by framework, once set up: (device, DeviceInfo).
_configured: dict[str, tuple[Any, DeviceInfo]] = {}


def configure_once(
    framework: str, setup: Callable[[], tuple[Any, DeviceInfo]]
) -> tuple[Any, DeviceInfo]:
    """``setup()`` for a framework, run once per process (a replica is one process; its
    later versions reuse the first setup); its result is reported by ``placement_report``."""
    if framework not in _configured:
        _configured[framework] = setup()
    return _configured[framework]


def placement_report() -> dict[str, Any]:
    """``model_stats``'s ``placement``: Ray's assignment and the device the model runs on."""
    report = ray_placement()
    for _, info in _configured.values():
        report.update(info.to_json())
    return report


# --- frameworks ---------------------------------------------------------------------------


def setup_tensorflow(model: str, resources: ResourceSpec) -> DeviceInfo:
    """Configure TensorFlow's GPUs for this replica; call before TF creates any tensor.

    Only the first call in a process configures; later ones return its result.
    """
    if "tensorflow" not in _configured:
        info = _setup_tensorflow(model, resources)
        _configured["tensorflow"] = (info.device, info)
    return _configured["tensorflow"][1]


def _setup_tensorflow(model: str, resources: ResourceSpec) -> DeviceInfo:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if resources.num_gpus <= 0:
        if gpus:
            # Ray leaves every GPU visible to a replica that asked for none; TF would take them.
            tf.config.set_visible_devices([], "GPU")
            return DeviceInfo("cpu", "tensorflow", memory_policy="hidden")
        return DeviceInfo("cpu", "tensorflow")
    reason = (
        "no GPU found by tf.config.list_physical_devices('GPU')"
        if tf.test.is_built_with_cuda()
        else f"TensorFlow {tf.__version__} is built without CUDA (tensorflow-cpu)"
    )
    cuda_visible = os.environ.get(CUDA_VISIBLE_DEVICES)
    if choose_device(model, resources, "TensorFlow", len(gpus), reason, cuda_visible) is None:
        fallback = no_gpu_message(model, resources, "TensorFlow", reason, cuda_visible)
        logger.warning("%s; allow_cpu_fallback is set, so it runs on the CPU", fallback)
        return DeviceInfo("cpu", "tensorflow", fallback_reason=reason)
    limit = memory_limit_mib(resources.num_gpus, total_gpu_memory_mib())
    try:
        for gpu in gpus:
            if limit is not None:
                config = tf.config.LogicalDeviceConfiguration(memory_limit=limit)
                tf.config.set_logical_device_configuration(gpu, [config])
            else:
                tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError as exc:  # TF already initialised its GPUs in this process
        raise ModelLoadError(
            f"model '{model}': cannot set TensorFlow's GPU memory for its share of"
            f" num_gpus={resources.num_gpus:g}: {exc}"
        ) from None
    if limit is None and resources.num_gpus < 1:
        logger.warning(
            "model '%s': GPU size unknown (no pynvml or nvidia-smi), so its %g GPU share is"
            " not enforced; TensorFlow grows its memory as needed",
            model,
            resources.num_gpus,
        )
    policy = "limit" if limit is not None else "growth"
    logger.info("model '%s' runs on GPU:0 (TensorFlow, memory %s %s)", model, policy, limit)
    return DeviceInfo(
        "GPU:0",
        "tensorflow",
        memory_policy=policy,
        memory_limit_mib=limit,
        memory_in_use=lambda: _tf_memory_in_use(tf),
    )


def _tf_memory_in_use(tf: Any) -> dict[str, int]:
    info = tf.config.experimental.get_memory_info("GPU:0")
    return {"current": info["current"] // 2**20, "peak": info["peak"] // 2**20}


def setup_torch(model: str, resources: ResourceSpec, dtype: str | None) -> tuple[Any, DeviceInfo]:
    """The torch device and dtype for this replica, with its GPU memory capped at its share.

    Only the first call in a process configures; later ones return its result.
    """
    if "torch" not in _configured:
        _configured["torch"] = _setup_torch(model, resources, dtype)
    return _configured["torch"]


def _setup_torch(model: str, resources: ResourceSpec, dtype: str | None) -> tuple[Any, DeviceInfo]:
    import torch

    dtype_name = dtype or DEFAULT_DTYPE
    if resources.num_gpus <= 0:
        return torch.device("cpu"), DeviceInfo("cpu", "torch", dtype=dtype_name)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    reason = (
        f"torch {torch.__version__} is built without CUDA"
        if torch.version.cuda is None
        else "torch.cuda.is_available() is False (no NVIDIA driver or device)"
    )
    cuda_visible = os.environ.get(CUDA_VISIBLE_DEVICES)
    if choose_device(model, resources, "torch", count, reason, cuda_visible) is None:
        fallback = no_gpu_message(model, resources, "torch", reason, cuda_visible)
        logger.warning("%s; allow_cpu_fallback is set, so it runs on the CPU", fallback)
        device_info = DeviceInfo("cpu", "torch", dtype=dtype_name, fallback_reason=reason)
        return torch.device("cpu"), device_info
    device = torch.device("cuda", 0)
    total_mib = torch.cuda.get_device_properties(device).total_memory // 2**20
    limit = memory_limit_mib(resources.num_gpus, total_mib)
    if limit is not None:
        torch.cuda.set_per_process_memory_fraction(limit / total_mib, device)
    logger.info("model '%s' runs on %s (%s, memory limit %s MiB)", model, device, dtype_name, limit)
    return device, DeviceInfo(
        str(device),
        "torch",
        dtype=dtype_name,
        memory_policy="fraction" if limit is not None else "none",
        memory_limit_mib=limit,
        memory_in_use=lambda: _torch_memory_in_use(torch, device),
    )


def _torch_memory_in_use(torch: Any, device: Any) -> dict[str, int]:
    return {
        "allocated": torch.cuda.memory_allocated(device) // 2**20,
        "reserved": torch.cuda.memory_reserved(device) // 2**20,
        "peak": torch.cuda.max_memory_allocated(device) // 2**20,
    }


def torch_dtype(torch: Any, name: str | None) -> Any:
    """``"bfloat16"`` -> ``torch.bfloat16``; None is float32."""
    return getattr(torch, name or DEFAULT_DTYPE)
