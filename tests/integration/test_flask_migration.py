"""The migration example, end to end: the Flask app of ``examples/flask_digits`` and the same
logic as a Python model, served from the example's own ``serve_config.yaml``, answer the
Flask app's own request bodies alike (good images and bad ones)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from examples.flask_digits.build import NAME, build
from serve_app.examples import digits_sample
from tests.helpers import wait_for
from tests.integration.conftest import deploy_apps

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = ROOT / "examples" / "flask_digits" / "serve_config.yaml"
INGRESS = "flask-example"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flask_example")
    build(root)
    return root


@pytest.fixture(scope="module")
def flask_client(repository: Path, monkeypatch_module: pytest.MonkeyPatch) -> Any:
    """The Flask app as it runs today, with its model file."""
    monkeypatch_module.setenv("MODEL_PATH", str(repository / NAME / "1" / "my_model.h5"))
    flask_app = importlib.import_module("examples.flask_digits.flask_app")
    return flask_app.app.test_client()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def served(serve_url: str, repository: Path) -> str:
    """The example's applications, as its serve_config.yaml writes them (the ingress at a
    prefix of its own here, and the model's uri in this test's repository)."""
    applications = yaml.safe_load(EXAMPLE_CONFIG.read_text())["applications"]
    by_name = {app["name"]: app for app in applications}
    ingress = {**by_name["ingress"], "name": INGRESS, "route_prefix": f"/{INGRESS}"}
    model = by_name[NAME]
    model["args"]["uri"] = str(repository / NAME)
    deploy_apps([ingress, model])
    base = f"{serve_url}/{INGRESS}"
    wait_for(lambda: requests.get(f"{base}/v1/models/{NAME}", timeout=10).ok, 240, NAME)
    return base


def flask_bodies() -> list[Any]:
    """Request bodies the Flask app takes: 8x8 images of pixel values 0-16, and mistakes."""
    images = [
        [[round(p * 16) for p in row[r * 8 : r * 8 + 8]] for r in range(8)]
        for row in digits_sample(6)
    ]
    return [
        *({"image": image} for image in images),
        {"image": [[0] * 8] * 7},
        {"image": [[99] * 8] * 8},
        {"picture": images[0]},
    ]


def test_the_service_answers_the_flask_apps_bodies_as_the_flask_app_does(
    flask_client: Any, served: str
) -> None:
    for body in flask_bodies():
        flask_answer = flask_client.post("/predict", json=body)
        served_answer = requests.post(
            f"{served}/v1/models/{NAME}:predict", json={"instances": [body]}, timeout=60
        )
        if flask_answer.status_code == 200:
            assert served_answer.status_code == 200, served_answer.text
            expected = flask_answer.get_json()
            got = served_answer.json()["predictions"][0]
            assert got["digit"] == expected["digit"]
            assert got["confidence"] == pytest.approx(expected["confidence"], abs=1e-4)
        else:
            assert flask_answer.status_code == 400
            assert served_answer.status_code == 400, served_answer.text
            assert flask_answer.get_json()["error"] in served_answer.json()["error"]
