"""The fleet file as a whole: serve_config.yaml and the mistakes no single builder can see."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from serve_app.cli import main
from serve_app.fleet_file import check_fleet

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = yaml.safe_load((ROOT / "serve_config.yaml").read_text())


def _apps(document: dict) -> dict[str, dict]:
    return {app["name"]: app for app in document["applications"]}


def test_the_default_fleet_is_one_ingress_and_one_application_per_model() -> None:
    fleet = check_fleet(DEFAULT)
    assert fleet.problems == []
    assert fleet.ingresses == ["ingress"]
    assert sorted(fleet.models) == ["digits", "minilm", "tiny-gpt2"]
    for name in fleet.models:
        assert _apps(DEFAULT)[name]["route_prefix"] is None


def _broken(change) -> list[str]:
    document = copy.deepcopy(DEFAULT)
    change(_apps(document), document)
    return check_fleet(document).problems


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (
            lambda apps, doc: apps["digits"]["args"]["batching"].update(max_batch_sise=2),
            "model 'digits' application args:\n  batching.max_batch_sise: unknown key"
            " 'max_batch_sise' (allowed: max_batch_size, batch_wait_timeout_s)",
        ),
        (
            lambda apps, doc: apps["digits"]["args"].update(name="digits2"),
            "holds 'digits2'; a model's application is named after it",
        ),
        (
            lambda apps, doc: apps["minilm"].update(route_prefix="/minilm"),
            "route_prefix must be null",
        ),
        (  # left out, Serve would route "/" to it: the ingress's prefix
            lambda apps, doc: apps["minilm"].pop("route_prefix"),
            "route_prefix must be null",
        ),
        (
            lambda apps, doc: apps["tiny-gpt2"]["args"].update(name="minilm"),
            "model or pool name 'minilm' is used 2 times",
        ),
        (
            lambda apps, doc: doc["applications"].remove(apps["ingress"]),
            "no ingress application",
        ),
        (
            lambda apps, doc: apps["ingress"]["args"].update(max_request_bytes=1),
            "max_request_bytes",
        ),
    ],
)
def test_mistakes_are_named(change, fragment: str) -> None:
    problems = _broken(change)
    assert any(fragment in problem for problem in problems), problems


def test_serve_app_check_exits_non_zero_on_a_mistake(tmp_path: Path, capsys) -> None:
    assert main(["check", str(ROOT / "serve_config.yaml")]) == 0
    assert "ok (1 ingress, 3 models, 0 pools)" in capsys.readouterr().out
    document = copy.deepcopy(DEFAULT)
    _apps(document)["digits"]["args"]["framework"] = "caffe"
    bad = tmp_path / "fleet.yaml"
    bad.write_text(yaml.safe_dump(document))
    assert main(["check", str(bad)]) == 1
    assert "application 'digits'" in capsys.readouterr().err
