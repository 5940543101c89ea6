"""`serve_config.yaml` is a valid Serve config, and `serve build` works on the default fleet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.config import parse_app_config
from serve_app.default_app import DEFAULT_CONFIG, fleet_args

ROOT = Path(__file__).resolve().parents[2]


def test_serve_config_is_valid_for_serve_and_for_us() -> None:
    ServeDeploySchema.model_validate(yaml.safe_load(DEFAULT_CONFIG.read_text()))
    config = parse_app_config(fleet_args())
    assert [m.name for m in config.models] == ["digits", "minilm", "tiny-gpt2"]


def test_serve_build_generates_a_deployable_config(tmp_path: Path) -> None:
    output = tmp_path / "built.yaml"
    serve = Path(sys.executable).parent / "serve"
    result = subprocess.run(
        [str(serve), "build", "serve_app.default_app:app", "-o", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    built = yaml.safe_load(output.read_text())
    ServeDeploySchema.model_validate(built)
    (application,) = built["applications"]
    assert application["import_path"] == "serve_app.default_app:app"
    deployments = {d["name"]: d for d in application["deployments"]}
    assert set(deployments) == {"digits", "minilm", "tiny-gpt2", "Ingress"}
    hot = deployments["digits"]["user_config"]
    assert hot["batching"] == {"max_batch_size": 32, "batch_wait_timeout_s": 0.0}
    assert hot["version_policy"]["latest"] == 1 and hot["labels"] == {}
    assert deployments["minilm"]["ray_actor_options"]["num_cpus"] == 0.5
