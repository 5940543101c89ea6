"""A model host closed while a new version loads (a pool evicting the model) frees that version
once its load ends, instead of leaving it AVAILABLE with no owner (issue 15, item 7).

A real host with the real TensorFlow servable and a local repository, in-process; the load of
version 2 waits for the test's signal, so the eviction lands in the middle of it.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from deployments.host import ModelHost
from deployments.tensorflow import TensorFlowModel
from deployments.versions import END, LOADING
from serve_app.config import HotSettings, ModelSpec, StoreSpec
from serve_app.examples import build_digits

GATE = threading.Event()


class GatedModel(TensorFlowModel):
    """The real servable; version 2's load waits for ``GATE``."""

    def load(self, path: Path) -> None:
        if path.name == "2":
            GATE.wait(120)
        super().load(path)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_digits(tmp_path_factory.mktemp("digits"))


def test_a_version_loading_when_the_model_is_evicted_is_freed_after_its_load(
    digits: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "digits"
    shutil.copytree(digits / "1", repo / "1")
    spec = ModelSpec(name="digits", framework="tensorflow", uri=str(repo))
    hot = HotSettings(poll_interval_s=0.05)
    host = ModelHost(spec, StoreSpec(), hot, GatedModel, ThreadPoolExecutor(1))
    host.initial_load()
    GATE.clear()

    async def scenario() -> None:
        host.apply_hot(hot)  # starts the maintainer, which polls the repository
        shutil.copytree(digits / "2", repo / "2")
        for _ in range(600):  # until version 2 is loading (and held at the gate)
            version = host.table.versions.get(2)
            if version is not None and version.state == LOADING:
                break
            await asyncio.sleep(0.05)
        assert host.table.versions[2].state == LOADING
        eviction = asyncio.create_task(host.unload_all())
        await asyncio.sleep(0.2)
        GATE.set()  # the load ends after the eviction began
        await asyncio.wait_for(eviction, 120)

    asyncio.run(scenario())
    for number, version in host.table.versions.items():
        assert (version.state, version.servable) == (END, None), number
