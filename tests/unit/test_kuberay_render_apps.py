"""Rendering serveConfigV2 from a fleet written as one application per model and per pool beside
an ingress application: overrides reach the matching application only, and a rendering that
would not deploy is refused with the application and the key named."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.kuberay.fleet_layout import locate
from serve_app.kuberay.render import Overrides, RenderError, apply_overrides, render_all

CPU = {"ray.io/node-group": "cpu"}
GPU = {"ray.io/node-group": "gpu-l4"}


def model_app(name: str, **args: Any) -> dict[str, Any]:
    return {
        "name": name,
        "route_prefix": None,
        "import_path": "serve_app.app:build_model",
        "args": {"name": name, "framework": "tensorflow", "uri": f"repo/{name}", **args},
    }


SERVE_CONFIG: dict[str, Any] = {
    "proxy_location": "EveryNode",
    "applications": [
        {"name": "ingress", "route_prefix": "/", "import_path": "serve_app.app:build_ingress",
         "args": {"num_replicas": 1}},
        model_app("a", resources={"num_cpus": 0.5}, num_replicas=2),
        model_app("b", store={"download_workers": 4}),
        {"name": "p", "route_prefix": None, "import_path": "serve_app.app:build_pool",
         "args": {"name": "p", "framework": "tensorflow", "uri": "repo/pool",
                  "resources": {"num_gpus": 1}}},
        {"name": "other", "import_path": "somebody.else:app", "route_prefix": "/other",
         "args": {"models": "not ours"}},
    ],
}  # fmt: skip


def apps(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {app["name"]: app for app in config["applications"]}


def rendered(*layers: dict[str, Any], config: dict[str, Any] = SERVE_CONFIG) -> dict[str, Any]:
    return apply_overrides(config, [Overrides.model_validate(layer) for layer in layers])


def test_overrides_reach_each_models_and_the_ingress_application_only() -> None:
    out = apps(
        rendered(
            {"model_root": "gs://bucket/models", "ingress": {"num_replicas": 2},
             "models": {"a": {"resources": {"num_gpus": 0.5}, "num_replicas": None,
                              "autoscaling": {"max_replicas": 3}},
                        "p": {"uri": "gs://bucket/pools/p"}}}
        )
    )  # fmt: skip
    assert out["a"]["args"] == {
        "name": "a", "framework": "tensorflow", "uri": "gs://bucket/models/a",
        "resources": {"num_cpus": 0.5, "num_gpus": 0.5}, "autoscaling": {"max_replicas": 3},
    }  # fmt: skip
    # b's store stays: only placement keys are overridden; model_root moves models, not pools.
    assert out["b"]["args"]["uri"] == "gs://bucket/models/b"
    assert out["b"]["args"]["store"] == {"download_workers": 4}
    assert out["p"]["args"]["uri"] == "gs://bucket/pools/p"
    assert out["ingress"]["args"] == {"num_replicas": 2}
    # Everything around the args, and applications that are not ours, are left as they are.
    assert out["other"] == apps(SERVE_CONFIG)["other"]
    for name in ("ingress", "a", "b", "p"):
        assert {k: v for k, v in out[name].items() if k != "args"} == {
            k: v for k, v in apps(SERVE_CONFIG)[name].items() if k != "args"
        }
    assert apps(SERVE_CONFIG)["a"]["args"]["uri"] == "repo/a"  # the input is not modified


def test_one_models_override_changes_that_models_application_only() -> None:
    before = apps(rendered({"placement": {"cpu": CPU, "gpu": GPU}}))
    after = apps(
        rendered(
            {"placement": {"cpu": CPU, "gpu": GPU}},
            {"models": {"b": {"uri": "gs://elsewhere/b", "resources": {"num_gpus": 1}}}},
        )
    )
    assert [n for n in before if before[n] != after[n]] == ["b"]
    # b moved to the GPU in the later layer: its placement follows.
    assert after["b"]["args"]["resources"] == {"num_gpus": 1, "label_selector": GPU}


def test_placement_goes_into_each_applications_own_selector() -> None:
    config = copy.deepcopy(SERVE_CONFIG)
    del apps(config)["ingress"]["args"]  # an ingress without args still gets its labels
    own = {"zone": "us-central1-a"}
    out = apps(
        rendered(
            {"placement": {"cpu": CPU, "gpu": GPU},
             "models": {"b": {"resources": {"label_selector": own}}}},
            config=config,
        )
    )  # fmt: skip
    assert out["ingress"]["args"] == {"label_selector": CPU}
    assert out["a"]["args"]["resources"] == {"num_cpus": 0.5, "label_selector": CPU}
    assert out["b"]["args"]["resources"] == {"label_selector": own}  # its own wins
    assert out["p"]["args"]["resources"] == {"num_gpus": 1, "label_selector": GPU}
    assert "args" not in apps(config)["ingress"]


def test_both_layouts_in_one_file_are_found() -> None:
    config = copy.deepcopy(SERVE_CONFIG)
    config["applications"].append(
        {"name": "fleet", "import_path": "serve_app.app:build_app",
         "args": {"models": [{"name": "c", "framework": "tensorflow", "uri": "repo/c"}]}}
    )  # fmt: skip
    layout = locate(config)
    assert [(e.kind, e.name) for e in layout.entries] == [
        ("model", "a"), ("model", "b"), ("pool", "p"), ("model", "c")
    ]  # fmt: skip
    assert [(s.key, s.get()) for s in layout.ingresses] == [("args", {"num_replicas": 1}),
                                                            ("ingress", {})]  # fmt: skip
    out = apps(rendered({"placement": {"cpu": CPU}}, config=config))
    assert out["fleet"]["args"]["ingress"] == {"label_selector": CPU}
    assert out["fleet"]["args"]["models"][0]["resources"] == {"label_selector": CPU}


def test_unknown_names_list_the_models_and_pools() -> None:
    with pytest.raises(RenderError, match=r"unknown models: gpt2 \(.*: a, b, p\)"):
        rendered({"models": {"gpt2": {"uri": "x"}}})
    with pytest.raises(RenderError, match="no application of this project"):
        rendered({}, config={"applications": [apps(SERVE_CONFIG)["other"]]})


def render_error(tmp_path: Path, config: dict[str, Any], overrides: Any = None) -> list[str]:
    """The lines of the error that rendering ``config`` with ``overrides`` raises."""
    (tmp_path / "serve_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (tmp_path / "kuberay" / "base").mkdir(parents=True, exist_ok=True)
    (tmp_path / "kuberay" / "base" / "serve-overrides.yaml").write_text(
        yaml.safe_dump(overrides or {})
    )
    with pytest.raises(RenderError) as caught:
        render_all(tmp_path / "serve_config.yaml", tmp_path / "kuberay")
    return str(caught.value).splitlines()


HEAD = "kuberay/base: serve_config.yaml with kuberay/base/serve-overrides.yaml would not deploy:"


def test_a_bad_override_is_named_with_its_application_and_key(tmp_path: Path) -> None:
    lines = render_error(tmp_path, SERVE_CONFIG, {"models": {"a": {"resources": {"num_gpu": 1}}}})
    assert lines[:3] == [
        HEAD,
        "  application 'a' (applications[1]): invalid model 'a' application args:",
        "    resources.num_gpu: unknown key 'num_gpu' (allowed: num_cpus, num_gpus, memory,"
        " accelerator_type, label_selector, allow_cpu_fallback)",
    ]
    lines = render_error(tmp_path, SERVE_CONFIG, {"ingress": {"max_request_bytes": 1}})
    assert lines[1].startswith("  application 'ingress' (applications[0]): invalid ingress")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda a: a["b"].update(route_prefix="/b"),
         "  application 'b' (applications[2]): route_prefix must be null (the ingress"
         " application reaches it)"),
        (lambda a: a["b"]["args"].update(name="a"), "  model or pool name 'a' is used 2 times"),
        (lambda a: a["ingress"].update(import_path="somebody.else:app"),
         "  no ingress application (import_path: serve_app.app:build_ingress): nothing would"
         " serve the models"),
        (lambda a: a["a"].update(deployments=[{"name": "a", "user_config": {"batchin": {}}}]),
         "  application 'a' (applications[1]): deployments 'a': invalid user_config for model"
         " 'a':"),
    ],
)  # fmt: skip
def test_a_fleet_that_would_not_deploy_is_refused(tmp_path: Path, change, problem: str) -> None:
    config = copy.deepcopy(SERVE_CONFIG)
    change(apps(config))
    lines = render_error(tmp_path, config)
    assert lines[0] == HEAD
    assert problem in lines, lines


def test_a_good_user_config_override_renders_as_written(tmp_path: Path) -> None:
    config = copy.deepcopy(SERVE_CONFIG)
    hot = [{"name": "a", "user_config": {"batching": {"max_batch_size": 4}}}]
    apps(config)["a"]["deployments"] = hot
    (tmp_path / "serve_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (tmp_path / "kuberay" / "base").mkdir(parents=True)
    (tmp_path / "kuberay" / "base" / "serve-overrides.yaml").write_text("{}\n")
    (patch,) = render_all(tmp_path / "serve_config.yaml", tmp_path / "kuberay")
    serve_config = yaml.safe_load(yaml.safe_load(patch.text)["spec"]["serveConfigV2"])
    assert serve_config == config


def test_an_override_of_replicas_replaces_the_other_way_of_setting_them() -> None:
    autoscaled = apps(rendered({"models": {"a": {"autoscaling": {"max_replicas": 3}}}}))["a"]
    assert autoscaled["args"]["autoscaling"] == {"max_replicas": 3}
    assert "num_replicas" not in autoscaled["args"]
    fixed = rendered({"models": {"a": {"autoscaling": {"max_replicas": 3}}}})
    fixed = apps(
        apply_overrides(fixed, [Overrides.model_validate({"models": {"a": {"num_replicas": 4}}})])
    )
    assert fixed["a"]["args"]["num_replicas"] == 4 and "autoscaling" not in fixed["a"]["args"]
