"""The application args schema: strict keys, readable errors, sensible defaults."""

import pytest

from serve_app.config import ConfigError, parse_app_config, parse_hot_settings


def model(**overrides):
    return {"name": "digits", "framework": "tensorflow", "uri": "repo/digits", **overrides}


def test_defaults() -> None:
    config = parse_app_config({"models": [model()]})
    spec = config.models[0]
    assert spec.version_policy.latest == 1
    assert spec.batching.max_batch_size == 32
    assert spec.effective_max_ongoing_requests() == 64
    assert spec.hot_settings().model_dump() == {
        "batching": {"max_batch_size": 32, "batch_wait_timeout_s": 0.005},
        "version_policy": {"latest": 1, "specific": None, "all": None},
        "labels": {},
        "poll_interval_s": 0.0,
        "traffic": None,
        "swap_policy": "availability",
    }
    # resources and dtype: a replica sets up its GPU share (or CPU) and dtype at start.
    assert set(spec.load_settings()) == {"name", "framework", "uri", "task", "resources", "dtype"}


def test_unknown_nested_key_names_key_model_and_allowed_keys() -> None:
    with pytest.raises(ConfigError) as error:
        parse_app_config({"models": [model(batching={"max_batch_sise": 8})]})
    message = str(error.value)
    assert "model 'digits' (models[0]): batching.max_batch_sise" in message
    assert "unknown key 'max_batch_sise'" in message
    assert "allowed: max_batch_size, batch_wait_timeout_s" in message


def test_unknown_top_level_and_model_keys() -> None:
    with pytest.raises(ConfigError) as error:
        parse_app_config({"models": [model(colour="red")], "modles": []})
    message = str(error.value)
    assert "model 'digits' (models[0]): colour: unknown key 'colour'" in message
    assert "modles: unknown key 'modles' (allowed: models, pools, ingress, store)" in message


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="duplicate model name 'digits'"):
        parse_app_config({"models": [model(), model(uri="elsewhere")]})


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"name": "Digits"}, "name"),
        ({"name": "../etc"}, "name"),
        ({"framework": "pytorch"}, "framework"),
        ({"framework": "transformers"}, "task is required"),
        ({"task": "text-generation"}, "task applies only to transformers"),
        ({"version_policy": {"latest": 1, "all": True}}, "exactly one of"),
        ({"version_policy": {}}, "exactly one of"),
        ({"batching": {"max_batch_size": 0}}, "max_batch_size"),
        ({"resources": {"num_gpus": -1}}, "num_gpus"),
        ({"autoscaling": {"min_replicas": 3, "max_replicas": 2}}, "exceeds max_replicas"),
        ({"num_replicas": 2, "autoscaling": {"max_replicas": 2}}, "not both"),
        ({"uri": ""}, "uri"),
    ],
)
def test_invalid_values_are_named(overrides: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_app_config({"models": [model(**overrides)]})


def test_args_must_be_a_mapping_with_models() -> None:
    with pytest.raises(ConfigError, match="mapping"):
        parse_app_config(["digits"])
    with pytest.raises(ConfigError, match="models"):
        parse_app_config({})


def test_hot_settings_merge_over_the_args_and_check_labels() -> None:
    base = (
        parse_app_config(
            {"models": [model(labels={"stable": 1}, version_policy={"specific": [1, 2]})]}
        )
        .models[0]
        .hot_settings()
        .model_dump()
    )
    merged = parse_hot_settings({"batching": {"max_batch_size": 4}}, "m", base)
    assert merged.batching.max_batch_size == 4
    assert merged.labels == {"stable": 1} and merged.version_policy.specific == [1, 2]
    with pytest.raises(ConfigError, match="labels"):
        parse_hot_settings({"labels": {"bad label": 1}}, "m")
    with pytest.raises(ConfigError, match="must be a mapping"):
        parse_hot_settings(["x"], "m")


def test_hot_settings_are_strict_too() -> None:
    assert parse_hot_settings(None, "m").batching.max_batch_size == 32
    with pytest.raises(ConfigError, match=r"user_config for model 'm'(.|\n)*unknown key 'size'"):
        parse_hot_settings({"batching": {"size": 2}}, "m")


def test_a_traffic_split_is_a_hot_setting_within_the_version_policy() -> None:
    config = parse_app_config(
        {"models": [model(version_policy={"specific": [1, 2]}, traffic={1: 90, "2": 10})]}
    )
    assert config.models[0].hot_settings().traffic == {1: 90.0, 2: 10.0}
    for bad, fragment in [
        ({"traffic": {1: 90, 2: 10}}, "latest: 1 keeps only 1 loaded"),
        ({"version_policy": {"specific": [1]}, "traffic": {2: 1}}, "does not load"),
        ({"version_policy": {"latest": 2}, "traffic": {1: 0, 2: 0}}, "no version any weight"),
        ({"version_policy": {"latest": 2}, "traffic": {1: -1}}, "traffic.1"),
    ]:
        with pytest.raises(ConfigError, match=fragment):
            parse_app_config({"models": [model(**bad)]})
