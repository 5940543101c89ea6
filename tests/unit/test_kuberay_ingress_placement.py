"""The ingress replicas go where ``ingress.label_selector`` says (the CPU group on KubeRay)."""

from __future__ import annotations

import pytest

from serve_app.app import _ingress_deployment
from serve_app.config import ConfigError, parse_app_config

MODEL = {"name": "a", "framework": "tensorflow", "uri": "repo/a"}


def test_the_ingress_asks_ray_for_its_label_selector() -> None:
    config = parse_app_config(
        {"models": [MODEL], "ingress": {"label_selector": {"ray.io/node-group": "cpu"}}}
    )
    options = _ingress_deployment(config.ingress).ray_actor_options
    assert options == {"num_cpus": 0.0, "label_selector": {"ray.io/node-group": "cpu"}}
    plain = _ingress_deployment(parse_app_config({"models": [MODEL]}).ingress).ray_actor_options
    assert plain == {"num_cpus": 0.0}


def test_a_bad_ingress_label_selector_is_named() -> None:
    with pytest.raises(ConfigError, match=r"ingress\.label_selector"):
        parse_app_config({"models": [MODEL], "ingress": {"label_selector": {"a b": "c"}}})
