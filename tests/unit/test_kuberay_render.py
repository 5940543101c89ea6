"""Rendering serveConfigV2 from a Serve config plus per-environment overrides, in the older
layout (one ``serve_app.app:build_app`` application holding every model), which still renders.
The layout of one application per model: ``test_kuberay_render_apps.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.kuberay.render import (
    Overrides,
    RenderError,
    apply_overrides,
    load_overrides,
    overrides_chain,
    render_all,
)

SERVE_CONFIG: dict[str, Any] = {
    "proxy_location": "EveryNode",
    "applications": [
        {
            "name": "models",
            "import_path": "serve_app.app:build_app",
            "args": {
                "models": [
                    {"name": "a", "framework": "tensorflow", "uri": "repo/a", "num_replicas": 2,
                     "resources": {"num_cpus": 0.5}},
                    {"name": "b", "framework": "transformers", "task": "feature-extraction",
                     "uri": "repo/b"},
                ]
            },
        }
    ],
}  # fmt: skip


def models_of(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in config["applications"][0]["args"]["models"]}


def test_model_root_moves_every_model_and_a_model_uri_wins() -> None:
    layer = Overrides.model_validate(
        {"model_root": "gs://bucket/models/", "models": {"b": {"uri": "/mnt/b"}}}
    )
    models = models_of(apply_overrides(SERVE_CONFIG, [layer]))
    assert models["a"]["uri"] == "gs://bucket/models/a"
    assert models["b"]["uri"] == "/mnt/b"
    assert models_of(SERVE_CONFIG)["a"]["uri"] == "repo/a"  # the input is not modified


def test_model_overrides_are_merge_patches() -> None:
    layer = Overrides.model_validate(
        {
            "models": {
                "a": {"resources": {"num_gpus": 0.5}, "num_replicas": None,
                      "autoscaling": {"min_replicas": 1, "max_replicas": 3}},
            },
            "ingress": {"num_replicas": 2},
        }
    )  # fmt: skip
    config = apply_overrides(SERVE_CONFIG, [layer])
    a = models_of(config)["a"]
    assert a["resources"] == {"num_cpus": 0.5, "num_gpus": 0.5}
    assert "num_replicas" not in a
    assert a["autoscaling"] == {"min_replicas": 1, "max_replicas": 3}
    assert config["applications"][0]["args"]["ingress"] == {"num_replicas": 2}


def test_later_layers_win() -> None:
    first = Overrides.model_validate({"model_root": "gs://one", "models": {"a": {"uri": "x"}}})
    second = Overrides.model_validate({"model_root": "/mnt/models"})
    models = models_of(apply_overrides(SERVE_CONFIG, [first, second]))
    assert models["a"]["uri"] == "/mnt/models/a"


CPU = {"ray.io/node-group": "cpu"}
GPU = {"ray.io/node-group": "gpu-l4"}


def test_placement_labels_go_by_the_final_num_gpus_and_reach_pools_and_the_ingress() -> None:
    config = dict(SERVE_CONFIG)
    app = dict(config["applications"][0])
    pool = {"name": "p", "framework": "tensorflow", "uri": "repo/p", "resources": {"num_gpus": 1}}
    app["args"] = dict(app["args"], pools=[pool])
    config["applications"] = [app]
    base = Overrides.model_validate({"placement": {"cpu": CPU, "gpu": GPU}})
    prod = Overrides.model_validate({"models": {"b": {"resources": {"num_gpus": 0.25}}}})
    args = apply_overrides(config, [base, prod])["applications"][0]["args"]
    assert models_of({"applications": [{"args": args}]})["a"]["resources"] == {
        "num_cpus": 0.5, "label_selector": CPU}  # fmt: skip
    # b moved to the GPU in a later layer: it gets the GPU labels, not the CPU ones.
    assert args["models"][1]["resources"] == {"num_gpus": 0.25, "label_selector": GPU}
    assert args["pools"][0]["resources"] == {"num_gpus": 1, "label_selector": GPU}
    assert args["ingress"] == {"label_selector": CPU}


def test_a_label_selector_of_its_own_wins_and_no_placement_changes_nothing() -> None:
    own = {"zone": "us-central1-a"}
    layer = Overrides.model_validate(
        {"placement": {"cpu": CPU}, "ingress": {"label_selector": own},
         "models": {"a": {"resources": {"label_selector": own}}}}
    )  # fmt: skip
    config = apply_overrides(SERVE_CONFIG, [layer])
    assert models_of(config)["a"]["resources"]["label_selector"] == own
    assert models_of(config)["b"]["resources"] == {"label_selector": CPU}
    assert config["applications"][0]["args"]["ingress"] == {"label_selector": own}
    assert apply_overrides(SERVE_CONFIG, [Overrides()]) == SERVE_CONFIG


def test_unknown_models_are_named() -> None:
    layer = Overrides.model_validate({"models": {"gpt2": {"uri": "x"}}})
    with pytest.raises(RenderError, match=r"unknown models: gpt2 \(models and pools in the Serve"):
        apply_overrides(SERVE_CONFIG, [layer])
    with pytest.raises(RenderError, match=r"^prod/serve-overrides.yaml names unknown models: gpt2"):
        apply_overrides(SERVE_CONFIG, [layer], [Path("prod/serve-overrides.yaml")])


def test_overrides_files_are_strict(tmp_path: Path) -> None:
    path = tmp_path / "serve-overrides.yaml"
    path.write_text("models:\n  a:\n    batching: {max_batch_size: 1}\n")
    with pytest.raises(
        RenderError, match=r"serve-overrides.yaml: invalid overrides:\n  models.a.batching"
    ):
        load_overrides(path)
    path.write_text("model_roots: gs://x\n")
    with pytest.raises(RenderError, match="model_roots"):
        load_overrides(path)
    path.write_text("# nothing yet\n")
    assert load_overrides(path) == Overrides()


def write_tree(root: Path, files: dict[str, Any]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))


def test_chain_follows_kustomize_resources_depth_first(tmp_path: Path) -> None:
    write_tree(tmp_path, {
        "base/kustomization.yaml": {"resources": ["rayservice.yaml"]},
        "base/rayservice.yaml": "{}\n",
        "base/serve-overrides.yaml": "{}\n",
        "overlays/prod/kustomization.yaml": {"resources": ["../../base"]},
        "overlays/prod/serve-overrides.yaml": "{}\n",
        "overlays/ha/kustomization.yaml": {"resources": ["../prod"]},
    })  # fmt: skip
    chain = overrides_chain(tmp_path / "overlays" / "ha")
    assert [p.parent.name for p in chain] == ["base", "prod"]


def test_render_all_names_the_directory_and_the_bad_key(tmp_path: Path) -> None:
    config = tmp_path / "serve_config.yaml"
    config.write_text(yaml.safe_dump(SERVE_CONFIG))
    typo = {"models": {"b": {"resources": {"num_gpu": 1}}}}
    write_tree(tmp_path, {
        "kuberay/base/serve-overrides.yaml": "{}\n",
        "kuberay/overlays/gpu/kustomization.yaml": {"resources": ["../../base"]},
        "kuberay/overlays/gpu/serve-overrides.yaml": typo,
    })  # fmt: skip
    with pytest.raises(RenderError) as caught:
        render_all(config, tmp_path / "kuberay")
    assert str(caught.value).splitlines()[:3] == [
        "kuberay/overlays/gpu: serve_config.yaml with kuberay/base/serve-overrides.yaml,"
        " kuberay/overlays/gpu/serve-overrides.yaml would not deploy:",
        "  application 'models' (applications[0]): invalid application args:",
        "    model 'b' (models[1]): resources.num_gpu: unknown key 'num_gpu' (allowed: num_cpus,"
        " num_gpus, memory, accelerator_type, label_selector, allow_cpu_fallback)",
    ]


def test_render_all_needs_an_overrides_file(tmp_path: Path) -> None:
    config = tmp_path / "serve_config.yaml"
    config.write_text(yaml.safe_dump(SERVE_CONFIG))
    with pytest.raises(RenderError, match=r"no serve-overrides\.yaml found"):
        render_all(config, tmp_path)
    with pytest.raises(RenderError, match="cannot read the Serve config"):
        render_all(tmp_path / "absent.yaml", tmp_path)


def test_rendered_patch_embeds_the_config_as_a_readable_block(tmp_path: Path) -> None:
    config = tmp_path / "serve_config.yaml"
    config.write_text(yaml.safe_dump(SERVE_CONFIG, sort_keys=False))
    write_tree(tmp_path, {"kuberay/base/serve-overrides.yaml": "{}\n"})
    (rendered,) = render_all(config, tmp_path / "kuberay")
    assert rendered.path == tmp_path / "kuberay" / "base" / "serve-config.patch.yaml"
    assert rendered.text.startswith(
        "# Generated by `serve-app kuberay render` from serve_config.yaml"
    )
    assert "  serveConfigV2: |\n    proxy_location: EveryNode\n" in rendered.text
    patch = yaml.safe_load(rendered.text)
    assert patch["metadata"] == {"name": "serve-app"}
    assert yaml.safe_load(patch["spec"]["serveConfigV2"]) == SERVE_CONFIG


def test_render_all_rejects_what_ray_serve_would_reject(tmp_path: Path) -> None:
    config = tmp_path / "serve_config.yaml"
    config.write_text(yaml.safe_dump(dict(SERVE_CONFIG, proxy_location="Nowhere")))
    write_tree(tmp_path, {"kuberay/base/serve-overrides.yaml": "{}\n"})
    with pytest.raises(
        RenderError,
        match=r"kuberay/base: serve_config\.yaml with kuberay/base/serve-overrides\.yaml is not a"
        r" valid Ray Serve config",
    ):
        render_all(config, tmp_path / "kuberay")
