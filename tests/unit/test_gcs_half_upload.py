"""A gs:// version listed while its upload was still in progress loads once the upload
completes (issue 25, item 8): the copy that failed to load is dropped from the cache, and
the retry, or a replica started later, lists GCS again and downloads the version whole.

A real host with the real TensorFlow servable, in-process (no Ray), reading from a real GCS
emulator (fake-gcs-server) through the real client. The model is TF Serving's own
half_plus_two SavedModel; its half upload is everything but ``variables/``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from deployments import versions
from deployments.host import ModelHost
from deployments.signature import prepare_inputs
from deployments.tensorflow import TensorFlowModel
from deployments.versions import AVAILABLE, END
from serve_app.config import HotSettings, ModelSpec, StoreSpec
from serve_app.errors import ModelLoadError
from tests.gcs_emulator import Emulator, gcs_emulator

ROOT = Path(__file__).resolve().parents[2]
HALF_PLUS_TWO = ROOT / "tests/data/tfserving/saved_model_half_plus_two_tf2_cpu/00000123"
BUCKET = "models"


@pytest.fixture
def gcs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Emulator, Path]]:
    """An emulator with an empty bucket (reached through its proxy), and a cache directory."""
    with gcs_emulator(tmp_path / "emulator") as (emulator, proxy):
        emulator.create_bucket(BUCKET)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        yield emulator, tmp_path / "cache"


def upload(emulator: Emulator, prefix: str, *, variables: bool) -> None:
    """Upload half_plus_two under ``prefix``: without ``variables/`` (an upload under way),
    or only ``variables/`` (the rest of it)."""
    for path in sorted(p for p in HALF_PLUS_TWO.rglob("*") if p.is_file()):
        relative = path.relative_to(HALF_PLUS_TWO).as_posix()
        if relative.startswith("variables/") == variables:
            emulator.upload_bytes(BUCKET, f"{prefix}/{relative}", path.read_bytes())


def host(cache: Path, hot: HotSettings | None = None) -> ModelHost:
    """What one replica of the model holds."""
    spec = ModelSpec(name="hp2", framework="tensorflow", uri=f"gs://{BUCKET}/hp2")
    store = StoreSpec(cache_dir=str(cache), retry_timeout_s=3)
    return ModelHost(spec, store, hot or HotSettings(), TensorFlowModel, ThreadPoolExecutor(1))


def half_plus_two(model: ModelHost, version: int) -> list[float]:
    """What ``version`` answers for x = 2, through its default signature."""
    servable = model.table.versions[version].servable
    signature = servable.signature("")
    name = next(iter(signature.inputs))
    prepared = prepare_inputs(signature, {name: np.array([2.0], np.float32)})
    outputs = servable.infer(signature.name, prepared.tensors, {})
    (public,) = signature.public_outputs()
    return [float(v) for v in np.asarray(outputs[public]).ravel()]


def test_a_replica_started_after_the_upload_completes_loads_the_version(
    gcs: tuple[Emulator, Path],
) -> None:
    emulator, cache = gcs
    upload(emulator, "hp2/1", variables=False)
    first = host(cache)
    with pytest.raises(ModelLoadError, match="version 1 at gs://models/hp2 failed to load"):
        first.initial_load()  # the replica fails to start, as Serve would see it

    upload(emulator, "hp2/1", variables=True)  # the upload completes
    restarted = host(cache)  # the replica Serve starts next, on the same machine
    restarted.initial_load()
    assert restarted.table.available() == [1]
    assert half_plus_two(restarted, 1) == [3.0]


def test_a_failed_version_is_retried_from_gcs_and_takes_over_once_whole(
    gcs: tuple[Emulator, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator, cache = gcs
    monkeypatch.setattr(versions, "RETRY_FAILED_AFTER_S", 0.2)  # not 10 s, in a unit test
    upload(emulator, "hp2/1", variables=False)
    upload(emulator, "hp2/1", variables=True)
    hot = HotSettings(poll_interval_s=0.1)
    model = host(cache, hot)
    model.initial_load()
    upload(emulator, "hp2/2", variables=False)  # version 2 appears, half uploaded

    async def scenario() -> None:
        model.apply_hot(hot)  # the maintainer polls GCS from now on
        await until(lambda: state(model, 2) == END, "version 2 to fail to load")
        assert model.table.versions[2].attempts == 1
        assert model.table.default([1, 2]).number == 1  # version 1 still answers
        upload(emulator, "hp2/2", variables=True)  # its upload completes
        await until(lambda: state(model, 2) == AVAILABLE, "the retry to load version 2")
        await model.unload_all()

    asyncio.run(scenario())
    assert model.table.versions[2].attempts == 2


def state(model: ModelHost, version: int) -> str | None:
    found = model.table.versions.get(version)
    return found.state if found is not None else None


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 120.0) -> None:
    """Wait (a bounded wait, not a timed assertion) until ``condition()`` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
