"""One model's change reaches one application of the rendered ``serveConfigV2``.

KubeRay applies a ``serveConfigV2`` update as ``serve deploy`` does, and Serve restarts the
deployments of an application only when its ``import_path``, ``runtime_env`` or ``args`` change.
So the rendered config must keep one application per model, and an edit of one model (its
override, its entry in ``serve_config.yaml``, adding or removing it) must leave every other
application's dict equal. Proven on copies of the ``kuberay/`` tree and of
``serve_config.yaml``, rendered, then built by the real kustomize.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.kuberay import kustomize
from serve_app.kuberay.render import render_all, write_rendered
from tests.kuberay.conftest import KUBERAY_DIR, OVERLAYS, ROOT, the_rayservice
from tests.kuberay.fleet import applications, serve_config_of

ALL = ["base", *OVERLAYS]
ON_PROD = [o for o in OVERLAYS if o.startswith("prod")]  # prod and the overlays built on it


def build_all(tree: Path) -> dict[str, dict[str, Any]]:
    """Every directory of a ``kuberay/`` tree, built: its Serve config's applications."""
    dirs = {"base": tree / "base"} | {o: tree / "overlays" / o for o in OVERLAYS}
    return {
        name: applications(serve_config_of(the_rayservice(kustomize.build(path))))
        for name, path in dirs.items()
    }


def render_copy(tmp_path: Path, serve_config: dict[str, Any], edit_tree=None) -> dict:
    """Copy ``kuberay/``, let ``edit_tree`` change it, render it from ``serve_config``, build."""
    tree = shutil.copytree(KUBERAY_DIR, tmp_path / "kuberay")
    if edit_tree is not None:
        edit_tree(tree)
    config = tmp_path / "serve_config.yaml"
    config.write_text(yaml.safe_dump(serve_config, sort_keys=False))
    write_rendered(render_all(config, tree))
    return build_all(tree)


@pytest.fixture(scope="module")
def committed(built) -> dict[str, dict[str, Any]]:
    return {name: applications(serve_config_of(the_rayservice(built[name]))) for name in ALL}


def changed(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Applications added, removed or different, by name."""
    return sorted(n for n in {*before, *after} if before.get(n) != after.get(n))


def test_one_models_override_changes_that_models_application_only(tmp_path, committed) -> None:
    def move_minilm(tree: Path) -> None:
        path = tree / "overlays" / "prod" / "serve-overrides.yaml"
        overrides = yaml.safe_load(path.read_text())
        overrides["models"]["minilm"] = {
            "uri": "gs://other-bucket/minilm",
            "resources": {"num_gpus": 0.5, "memory": 4 * 1024**3},
        }
        path.write_text(yaml.safe_dump(overrides))

    local = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    rendered = render_copy(tmp_path, local, move_minilm)
    for name in ALL:
        expected = ["minilm"] if name in ON_PROD else []
        assert changed(committed[name], rendered[name]) == expected, name
    resources = rendered["prod"]["minilm"]["args"]["resources"]
    assert resources["num_gpus"] == 0.5 and resources["memory"] == 4 * 1024**3
    assert rendered["prod"]["minilm"]["args"]["uri"] == "gs://other-bucket/minilm"
    # prod-gcsfuse's model_root comes later than prod's overrides: it keeps the mount.
    assert rendered["prod-gcsfuse"]["minilm"]["args"]["uri"] == "/mnt/models/minilm"


def test_adding_removing_or_editing_one_model_touches_its_application_only(
    tmp_path, committed
) -> None:
    local = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    edited = copy.deepcopy(local)
    apps = applications(edited)
    added = copy.deepcopy(apps["minilm"])
    added["name"] = added["args"]["name"] = "minilm-2"
    edited["applications"] = [a for a in edited["applications"] if a["name"] != "tiny-gpt2"]
    edited["applications"].append(added)
    apps["digits"]["args"]["batching"]["max_batch_size"] = 64

    def forget_tiny_gpt2(tree: Path) -> None:  # a removed model's overrides go with it
        path = tree / "overlays" / "prod" / "serve-overrides.yaml"
        overrides = yaml.safe_load(path.read_text())
        del overrides["models"]["tiny-gpt2"]
        path.write_text(yaml.safe_dump(overrides))

    rendered = render_copy(tmp_path, edited, forget_tiny_gpt2)
    for name in ALL:
        assert changed(committed[name], rendered[name]) == ["digits", "minilm-2", "tiny-gpt2"]
        assert rendered[name]["digits"]["args"]["batching"]["max_batch_size"] == 64
        assert rendered[name]["minilm-2"]["route_prefix"] is None
    assert rendered["dev"]["minilm-2"]["args"]["uri"] == "gs://BUCKET/models/minilm-2"
