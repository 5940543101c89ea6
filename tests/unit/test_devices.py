"""GPU placement settings: the config keys, the actor options, and the pure device logic.

The framework checks at the end run the real torch and TensorFlow of this environment: CPU
builds, so a model that asks for a GPU must fail clearly, or fall back when allowed.
"""

from __future__ import annotations

import pytest

from deployments import devices
from serve_app.config import ConfigError, ResourceSpec, parse_app_config
from serve_app.errors import ModelLoadError


def model(**overrides):
    return {"name": "gpt2", "framework": "transformers", "task": "text-generation", "uri": "r"} | (
        overrides
    )


def one_model(**overrides):
    return parse_app_config({"models": [model(**overrides)]}).models[0]


# --- config ------------------------------------------------------------------------------


def test_gpu_keys_are_accepted_and_reach_the_replica() -> None:
    resources = {
        "num_cpus": 1,
        "num_gpus": 0.5,
        "memory": 2**30,
        "accelerator_type": "L4",
        "label_selector": {"node-pool": "gpu"},
        "allow_cpu_fallback": True,
    }
    spec = one_model(resources=resources, dtype="bfloat16")
    assert spec.resources.model_dump() == resources
    settings = spec.load_settings()
    assert settings["dtype"] == "bfloat16"
    assert settings["resources"] == resources


def test_dtype_defaults_to_none_meaning_float32() -> None:
    spec = one_model()
    assert spec.dtype is None
    assert spec.resources.allow_cpu_fallback is False


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"dtype": "float64"}, "dtype: Input should be 'float32', 'float16' or 'bfloat16'"),
        (
            {"framework": "tensorflow", "task": None, "dtype": "float16"},
            "dtype applies only to transformers models",
        ),
        (
            {"resources": {"accelerator_type": "L4"}},
            "accelerator_type applies only to models with num_gpus > 0",
        ),
        (
            {"resources": {"allow_cpu_fallback": True}},
            "allow_cpu_fallback applies only to models with num_gpus > 0",
        ),
        (
            {"resources": {"num_gpus": 1.5}},
            "num_gpus above 1 must be a whole number of GPUs (got 1.5)",
        ),
        ({"resources": {"num_gpus": 1, "accelerator_type": "L4 GPU"}}, "accelerator_type"),
        ({"resources": {"label_selector": {"node-pool": "a b"}}}, "label_selector.node-pool"),
        ({"resources": {"allow_cpu_fallbak": True}}, "allow_cpu_fallback"),
    ],
)
def test_bad_gpu_settings_are_refused_with_the_key_named(overrides, expected) -> None:
    with pytest.raises(ConfigError) as error:
        parse_app_config({"models": [model(**overrides)]})
    assert "model 'gpt2' (models[0])" in str(error.value)
    assert expected in str(error.value)


def test_unknown_resources_key_lists_the_gpu_keys() -> None:
    with pytest.raises(ConfigError) as error:
        one_model(resources={"gpus": 1})
    assert (
        "allowed: num_cpus, num_gpus, memory, accelerator_type, label_selector,"
        " allow_cpu_fallback" in str(error.value)
    )


def test_whole_gpus_and_selector_operators_are_valid() -> None:
    spec = one_model(
        resources={"num_gpus": 2, "label_selector": {"ray.io/node-group": "!in(cpu, head)"}}
    )
    assert spec.resources.num_gpus == 2


def test_actor_options_carry_accelerator_type_and_label_selector() -> None:
    from serve_app.app import model_deployment

    spec = one_model(
        resources={
            "num_cpus": 0.5,
            "num_gpus": 0.25,
            "accelerator_type": "A100-80G",
            "label_selector": {"node-pool": "gpu"},
        }
    )
    options = model_deployment(spec).ray_actor_options
    assert options["num_gpus"] == 0.25
    assert options["accelerator_type"] == "A100-80G"
    assert options["label_selector"] == {"node-pool": "gpu"}
    plain = model_deployment(one_model()).ray_actor_options
    assert "accelerator_type" not in plain
    assert "label_selector" not in plain


# --- pure device logic ---------------------------------------------------------------------


def test_visible_device_ids() -> None:
    assert devices.visible_device_ids(None) == []
    assert devices.visible_device_ids("") == []
    assert devices.visible_device_ids("0") == ["0"]
    assert devices.visible_device_ids("1, 3") == ["1", "3"]
    assert devices.visible_device_ids("GPU-8a3f,GPU-77") == ["GPU-8a3f", "GPU-77"]


def test_memory_limit_is_the_share_less_a_context_reserve() -> None:
    assert devices.memory_limit_mib(0.5, 24576) == 12288 - devices.CONTEXT_RESERVE_MIB
    assert devices.memory_limit_mib(0.25, 16384) == 4096 - devices.CONTEXT_RESERVE_MIB
    # A small share keeps at least half of itself.
    assert devices.memory_limit_mib(0.05, 16384) == int(0.05 * 16384 / 2)
    # Whole GPUs, no GPU, or an unknown card: no limit.
    assert devices.memory_limit_mib(1, 24576) is None
    assert devices.memory_limit_mib(2, 24576) is None
    assert devices.memory_limit_mib(0, 24576) is None
    assert devices.memory_limit_mib(0.5, None) is None


@pytest.mark.parametrize("total", [15360, 16384, 23034, 40960, 81559])
def test_two_half_gpu_replicas_fit_on_one_card(total: int) -> None:
    limit = devices.memory_limit_mib(0.5, total)
    assert limit is not None
    assert 2 * (limit + devices.CONTEXT_RESERVE_MIB) <= total


def test_parse_nvidia_smi_and_pick_the_visible_cards() -> None:
    output = "0, GPU-aaaa, 23034\n1, GPU-bbbb, 16384\n\nNo devices were found\n"
    totals = devices.parse_nvidia_smi(output)
    assert totals == {"0": 23034, "GPU-aaaa": 23034, "1": 16384, "GPU-bbbb": 16384}
    assert devices.gpu_total_mib(["0"], totals) == 23034
    assert devices.gpu_total_mib(["GPU-bbbb"], totals) == 16384
    assert devices.gpu_total_mib(["0", "1"], totals) == 16384  # the smallest one counts
    assert devices.gpu_total_mib([], totals) == 16384  # unset: every card is visible
    assert devices.gpu_total_mib(["MIG-1234"], totals) is None  # unknown: no limit
    assert devices.gpu_total_mib(["0"], {}) is None


def test_a_replica_without_gpus_runs_on_the_cpu() -> None:
    resources = ResourceSpec(num_gpus=0)
    assert devices.choose_device("m", resources, "torch", 2, "", None) == "cpu"


def test_a_replica_whose_framework_sees_a_gpu_runs_on_it() -> None:
    resources = ResourceSpec(num_gpus=0.5)
    assert devices.choose_device("m", resources, "torch", 1, "", "0") == "gpu"


def test_no_visible_gpu_fails_naming_the_model_share_reason_and_fix() -> None:
    resources = ResourceSpec(num_gpus=0.5)
    with pytest.raises(ModelLoadError) as error:
        devices.choose_device("gpt2", resources, "torch", 0, "torch 2.13.0+cpu is built", "0")
    message = str(error.value)
    assert message.startswith("model 'gpt2' asked for num_gpus=0.5")
    assert "Ray reserved GPU 0 for it (CUDA_VISIBLE_DEVICES=0)" in message
    assert "torch sees no CUDA device: torch 2.13.0+cpu is built" in message
    assert "resources.allow_cpu_fallback: true" in message
    unset = devices.no_gpu_message("gpt2", resources, "torch", "why", None)
    assert "CUDA_VISIBLE_DEVICES is not set" in unset


def test_no_visible_gpu_with_fallback_allowed_means_cpu() -> None:
    resources = ResourceSpec(num_gpus=1, allow_cpu_fallback=True)
    assert devices.choose_device("m", resources, "TensorFlow", 0, "why", "0") is None


def test_device_info_reports_memory_errors_instead_of_failing() -> None:
    def broken() -> dict[str, int]:
        raise RuntimeError("driver gone")

    info = devices.DeviceInfo("cuda:0", "torch", dtype="float16", memory_in_use=broken)
    report = info.to_json()
    assert report["device"] == "cuda:0"
    assert report["dtype"] == "float16"
    assert report["gpu_memory_mib"] == {"error": "RuntimeError: driver gone"}


def test_placement_outside_ray_reports_without_asking_ray(monkeypatch) -> None:
    import ray

    def must_not_be_called() -> None:
        raise AssertionError("asking Ray outside a worker would start a local Ray")

    # As in a process that never connected to Ray (a model called in-process).
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "get_runtime_context", must_not_be_called)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    report = devices.ray_placement()
    assert report == {
        "CUDA_VISIBLE_DEVICES": "3",
        "node_id": None,
        "gpu_ids": [],
        "assigned_resources": {},
    }


# --- the real frameworks of this environment (CPU builds) --------------------------------


@pytest.fixture
def fresh_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sets up devices as a new replica process would."""
    monkeypatch.setattr(devices, "_configured", {})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # what Ray sets for a declared GPU


def _torch_without_gpu() -> bool:
    import torch

    return not torch.cuda.is_available()


@pytest.mark.usefixtures("fresh_setup")
def test_torch_model_asking_for_a_gpu_fails_clearly_without_one() -> None:
    if not _torch_without_gpu():
        pytest.skip("a CUDA device is visible here")
    with pytest.raises(ModelLoadError) as error:
        devices.setup_torch("gpt2", ResourceSpec(num_gpus=0.5), "float16")
    assert "torch sees no CUDA device" in str(error.value)
    assert "CUDA_VISIBLE_DEVICES=0" in str(error.value)


@pytest.mark.usefixtures("fresh_setup")
def test_torch_model_falls_back_to_cpu_when_allowed_and_keeps_its_dtype() -> None:
    if not _torch_without_gpu():
        pytest.skip("a CUDA device is visible here")
    import torch

    resources = ResourceSpec(num_gpus=0.5, allow_cpu_fallback=True)
    device, info = devices.setup_torch("gpt2", resources, "bfloat16")
    assert device == torch.device("cpu")
    assert info.device == "cpu"
    assert info.dtype == "bfloat16"
    assert info.fallback_reason
    # Set up once per process: a second version of the model reuses it.
    assert devices.setup_torch("gpt2", resources, "bfloat16") == (device, info)
    assert devices.placement_report()["cpu_fallback"] == info.fallback_reason
    assert devices.torch_dtype(torch, "bfloat16") is torch.bfloat16
    assert devices.torch_dtype(torch, None) is torch.float32


@pytest.mark.usefixtures("fresh_setup")
def test_tensorflow_model_asking_for_a_gpu_fails_clearly_or_falls_back() -> None:
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible here")
    with pytest.raises(ModelLoadError) as error:
        devices.setup_tensorflow("digits", ResourceSpec(num_gpus=0.5))
    assert "TensorFlow sees no CUDA device" in str(error.value)
    info = devices.setup_tensorflow("digits", ResourceSpec(num_gpus=0.5, allow_cpu_fallback=True))
    assert (info.device, info.framework) == ("cpu", "tensorflow")
    assert info.fallback_reason
