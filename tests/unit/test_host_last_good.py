"""A model keeps its newest version that loads (issue 25, item 9).

A real host with the real TensorFlow servable and a local repository, in-process. A broken
version is a ``model.keras`` that is not a Keras file.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from deployments.host import ModelHost
from deployments.tensorflow import TensorFlowModel
from deployments.versions import END
from serve_app.config import RESOURCE, HotSettings, ModelSpec, StoreSpec, VersionPolicy
from serve_app.errors import ModelLoadError
from serve_app.examples import build_digits


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_digits(tmp_path_factory.mktemp("digits"), versions=(1,))


def write_broken(directory: Path) -> None:
    directory.mkdir(parents=True)
    (directory / "model.keras").write_bytes(b"not a keras file")


def host_of(repo: Path, hot: HotSettings) -> ModelHost:
    spec = ModelSpec(name="digits", framework="tensorflow", uri=str(repo))
    return ModelHost(spec, StoreSpec(), hot, TensorFlowModel, ThreadPoolExecutor(1))


def assert_broken_reported(host: ModelHost, number: int) -> None:
    (status,) = host.model_status(number)
    assert status["state"] == END, status
    assert status["status"]["error_code"] == "UNKNOWN", status
    assert f"version {number}" in status["status"]["error_message"], status
    assert "failed to load" in status["status"]["error_message"], status


def test_a_resource_swap_to_a_broken_version_brings_the_old_version_back(
    digits: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "digits"
    shutil.copytree(digits / "1", repo / "1")
    hot = HotSettings(swap_policy=RESOURCE, poll_interval_s=0.05)
    host = host_of(repo, hot)
    host.initial_load()

    async def scenario() -> dict[str, object]:
        host.apply_hot(hot)  # starts the maintainer, which polls the repository
        write_broken(repo / "2")
        deadline = time.monotonic() + 120
        while not host.swaps and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        seen = {
            "available": host.table.available(),
            "health": _health(host),
            "default": host.table.default([2]).number,
        }
        await host.unload_all()
        return seen

    seen = asyncio.run(scenario())
    (swap,) = host.swaps
    assert swap["unloaded"] == [1] and swap["loaded"] == [] and swap["failed"] == [2], swap
    assert seen == {"available": [1], "health": "ok", "default": 1}
    assert_broken_reported(host, 2)


def _health(host: ModelHost) -> str:
    try:
        host.check_health()
    except RuntimeError as exc:
        return str(exc)
    return "ok"


def test_a_start_with_the_newest_version_broken_serves_the_older_good_one(
    digits: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "digits"
    shutil.copytree(digits / "1", repo / "1")
    write_broken(repo / "2")
    host = host_of(repo, HotSettings(version_policy=VersionPolicy(latest=1)))
    host.initial_load()
    assert host.table.available() == [1]
    assert host.table.default([2]).number == 1
    assert_broken_reported(host, 2)
    assert [s["version"] for s in host.model_status()] == ["1", "2"]


def test_pinned_versions_get_no_fallback(digits: Path, tmp_path: Path) -> None:
    """``specific`` names what the user wants: a broken pinned version fails the start."""
    repo = tmp_path / "digits"
    shutil.copytree(digits / "1", repo / "1")
    write_broken(repo / "2")
    host = host_of(repo, HotSettings(version_policy=VersionPolicy(specific=[2])))
    with pytest.raises(ModelLoadError, match="version 2"):
        host.initial_load()
