"""`serve-app import-tfserving`: TF Serving's model config and batching parameters.

The inputs are TF Serving's own example files (good_model_config.txt, batching_config.txt)
and variations of them in the same text-proto syntax.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serve_app.cli import main
from serve_app.config import parse_app_config
from serve_app.fleet_file import check_fleet
from serve_app.grpc.services import SERVICER_FUNCTIONS
from serve_app.tfserving_import import (
    ImportRefused,
    batching_parameters_class,
    import_tfserving,
    render,
)
from tests.helpers import TFSERVING_TESTDATA

GOOD_CONFIG = TFSERVING_TESTDATA / "good_model_config.txt"
BATCHING = TFSERVING_TESTDATA / "batching_config.txt"
ENV = {
    # TF Serving's test fills these template variables the same way.
    "TEST_HALF_PLUS_TWO_DIR": str(TFSERVING_TESTDATA / "saved_model_half_plus_two_cpu"),
    "TEST_HALF_PLUS_THREE_DIR": str(TFSERVING_TESTDATA / "saved_model_half_plus_three"),
}


def one_model(body: str) -> str:
    return f'model_config_list {{ config {{ name: "m" model_platform: "tensorflow" {body} }} }}'


def test_tf_servings_example_configs_become_a_valid_fleet() -> None:
    imported = import_tfserving(GOOD_CONFIG.read_text(), BATCHING.read_text(), environ=ENV)
    batching = {
        "batching": {"max_batch_size": 128, "batch_wait_timeout_s": 0.0},
        "max_queued_requests": 1_000_000 * 128,
    }
    assert imported.args == {
        "models": [
            {
                "name": "half_plus_two",
                "framework": "tensorflow",
                "uri": ENV["TEST_HALF_PLUS_TWO_DIR"],
                "poll_interval_s": 1.0,
                **batching,
            },
            {
                "name": "half_plus_three",
                "framework": "tensorflow",
                "uri": ENV["TEST_HALF_PLUS_THREE_DIR"],
                "poll_interval_s": 1.0,
                **batching,
            },
        ]
    }
    # num_batch_threads has no equivalent: said, not silently dropped.
    assert any(note.startswith("num_batch_threads is not carried over") for note in imported.notes)
    document = yaml.safe_load(render(imported, "good_model_config.txt", http_port=8501))
    assert document["http_options"]["port"] == 8501
    # TF Serving's gRPC services too, as serve_config.yaml has them.
    assert document["grpc_options"] == {
        "port": 9000,
        "grpc_servicer_functions": SERVICER_FUNCTIONS,
    }
    # The default layout: one ingress application and one application per model.
    ingress, *models = document["applications"]
    assert ingress["import_path"] == "serve_app.app:build_ingress"
    assert [m["args"] for m in models] == imported.args["models"]
    assert all(m["route_prefix"] is None and m["name"] == m["args"]["name"] for m in models)
    assert check_fleet(document).problems == []
    parse_app_config(imported.args)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("", {}),
        ("model_version_policy { latest { num_versions: 2 } }", {"version_policy": {"latest": 2}}),
        ("model_version_policy { all {} }", {"version_policy": {"all": True}}),
        (
            "model_version_policy { specific { versions: 3 versions: 1 } }",
            {"version_policy": {"specific": [1, 3]}},
        ),
        (
            "model_version_policy { specific { versions: 1 versions: 2 } }"
            ' version_labels { key: "stable" value: 1 }'
            ' version_labels { key: "canary" value: 2 }',
            {"version_policy": {"specific": [1, 2]}, "labels": {"canary": 2, "stable": 1}},
        ),
    ],
)
def test_version_policies_and_labels(body: str, expected: dict) -> None:
    text = one_model(f'base_path: "gs://bucket/m" {body}')
    (model,) = import_tfserving(text, poll_interval_s=0).args["models"]
    assert model == {"name": "m", "framework": "tensorflow", "uri": "gs://bucket/m", **expected}


def test_deprecated_model_type_tensorflow_is_accepted() -> None:
    text = (
        'model_config_list { config { name: "m" base_path: "/models/m" model_type: TENSORFLOW } }'
    )
    assert import_tfserving(text).args["models"][0]["framework"] == "tensorflow"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("model_config_list { config { name: 'm' base_path: '/m' bogus: 1 } }", "not a Model"),
        ("custom_model_config { }", "only model_config_list"),
        ("model_config_list { }", "no config entries"),
        (one_model('base_path: "s3://b/m"'), "uses s3://"),
        (one_model('base_path: "${NOT_SET_ANYWHERE}/m"'), "${NOT_SET_ANYWHERE}, which is not set"),
        (
            'model_config_list { config { name: "m" base_path: "/m" model_platform: "tflite" } }',
            "model_platform 'tflite' cannot be imported",
        ),
        (
            'model_config_list { config { name: "m" base_path: "/m" model_type: OTHER } }',
            "model_type OTHER",
        ),
        (
            'model_config_list { config { name: "m" base_path: "/m" model_type: TENSORFLOW'
            ' model_platform: "tensorflow" } }',
            "both model_type",
        ),
        (one_model('base_path: "/m" logging_config { }'), "logging_config"),
        (
            'model_config_list { config { name: "Big" base_path: "/m" model_platform:'
            ' "tensorflow" } }',
            "model names here must match",
        ),
        (
            'model_config_list { config { name: "m" base_path: "/a" model_platform:'
            ' "tensorflow" } config { name: "m" base_path: "/b" model_platform: "tensorflow" } }',
            "duplicate model name 'm'",
        ),
    ],
)
def test_what_cannot_be_expressed_is_refused_with_the_reason(text: str, fragment: str) -> None:
    with pytest.raises(ImportRefused) as info:
        import_tfserving(text, environ={})
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("batching", "fragment"),
    [
        ("max_batch_size { value: 100000 }", "not in 1..4096"),
        ("batch_timeout_micros { value: 60000000 }", "not in 0..10000000"),
        ("max_batch_sise { value: 8 }", "not a BatchingParameters"),
    ],
)
def test_batching_values_out_of_range_are_refused(batching: str, fragment: str) -> None:
    with pytest.raises(ImportRefused, match=fragment):
        import_tfserving(one_model('base_path: "/m"'), batching)


def test_batching_knobs_without_an_equivalent_are_noted() -> None:
    batching = (
        "max_batch_size { value: 64 } max_execution_batch_size { value: 16 }"
        " enable_large_batch_splitting { value: true } allowed_batch_sizes: 8"
        " allowed_batch_sizes: 16 pad_variable_length_inputs: true"
        ' thread_pool_name { value: "pool" }'
    )
    imported = import_tfserving(one_model('base_path: "/m"'), batching)
    assert imported.args["models"][0]["batching"] == {"max_batch_size": 16}
    noted = {note.split(" ", 1)[0] for note in imported.notes}
    assert noted == {
        "max_execution_batch_size",
        "enable_large_batch_splitting",
        "allowed_batch_sizes",
        "pad_variable_length_inputs",
        "thread_pool_name",
    }


def test_batching_parameters_message_reads_tf_servings_example() -> None:
    from google.protobuf import text_format

    params = text_format.Parse(BATCHING.read_text(), batching_parameters_class()())
    assert params.max_batch_size.value == 128
    assert params.HasField("batch_timeout_micros") and params.batch_timeout_micros.value == 0
    assert params.num_batch_threads.value == 8


def test_cli_writes_the_config_or_says_why_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "serve_config.yaml"
    files = ["--model-config", str(GOOD_CONFIG), "--batching-config", str(BATCHING)]
    code = main(
        ["import-tfserving", *files, "--file-system-poll-wait-seconds", "0", "-o", str(out)]
    )
    assert code == 0
    models = [a["args"] for a in yaml.safe_load(out.read_text())["applications"][1:]]
    assert [m["name"] for m in models] == ["half_plus_two", "half_plus_three"]
    assert all("poll_interval_s" not in m for m in models)
    assert "note: num_batch_threads" in capsys.readouterr().err
    monkeypatch.delenv("TEST_HALF_PLUS_THREE_DIR")
    assert main(["import-tfserving", "--model-config", str(GOOD_CONFIG)]) == 1
    assert "${TEST_HALF_PLUS_THREE_DIR}, which is not set" in capsys.readouterr().err
    assert main(["import-tfserving", "--model-config", str(tmp_path / "missing")]) == 1
    assert "cannot read" in capsys.readouterr().err
