"""The gs:// store against a real GCS emulator (fake-gcs-server), with the real client over HTTP.

No Ray here: a store is built in this process (or in child processes, standing in for
replicas), and every request it makes is counted by the proxy in front of the emulator.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from serve_app.config import StoreSpec
from serve_app.errors import ModelLoadError
from serve_app.store import list_pool_models, open_store, store_notice
from serve_app.store.gcs import GCSStore
from serve_app.store.locks import FileLock
from serve_app.store.transfer import MAX_CHECKSUM_ATTEMPTS
from tests.gcs_emulator import CountingProxy, Emulator, gcs_emulator
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "models"
FILES = {
    "digits/1/model.bin": os.urandom(2_000),
    "digits/2/model.bin": os.urandom(300_000),
    "digits/2/assets/vocab.txt": b"zero\none\ntwo\n",
    "padded/00000123/saved_model.pb": os.urandom(1_000),
    "padded/notes/readme.txt": b"not a version",
    "flat/config.json": b'{"layers": 2}',
    "flat/weights.bin": os.urandom(5_000),
    "big/1/weights.bin": os.urandom(700_000),
}


@pytest.fixture(scope="module")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Emulator, CountingProxy]]:
    with gcs_emulator(tmp_path_factory.mktemp("gcs") / "data") as (emulator, proxy):
        emulator.create_bucket(BUCKET)
        for name, data in FILES.items():
            emulator.upload_bytes(BUCKET, name, data)
        yield emulator, proxy


@pytest.fixture
def proxy(
    gcs: tuple[Emulator, CountingProxy], monkeypatch: pytest.MonkeyPatch
) -> Iterator[CountingProxy]:
    """The counting proxy, running, with no faults queued and fresh counts."""
    proxy = gcs[1]
    if not proxy.running:
        proxy.start()
    proxy.clear_faults()
    proxy.release_downloads()
    proxy.reset_counts()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    yield proxy
    proxy.release_downloads()
    if not proxy.running:
        proxy.start()


def store(uri: str, cache: Path, **settings: object) -> GCSStore:
    opened = open_store(uri, StoreSpec(cache_dir=str(cache), **settings))
    assert isinstance(opened, GCSStore)
    return opened


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_versions_are_listed_and_one_version_is_downloaded_verified(
    proxy: CountingProxy, tmp_path: Path
) -> None:
    models = store("gs://models/digits", tmp_path)
    assert models.list_versions() == [1, 2]
    path = models.fetch(2)
    assert files_under(path) == {
        "model.bin": FILES["digits/2/model.bin"],
        "assets/vocab.txt": FILES["digits/2/assets/vocab.txt"],
    }
    assert path.is_relative_to(tmp_path)
    downloads = sorted(s.object_name for s in proxy.media())
    assert downloads == ["digits/2/assets/vocab.txt", "digits/2/model.bin"]  # each once, no v1
    assert all(s.status in (200, 206) for s in proxy.media())
    assert store_notice(models) == ""


def test_zero_padded_versions_and_unversioned_repositories(
    proxy: CountingProxy, tmp_path: Path
) -> None:
    padded = store("gs://models/padded", tmp_path)
    assert padded.list_versions() == [123]  # "notes" is not a version directory
    assert files_under(padded.fetch(123)) == {
        "saved_model.pb": FILES["padded/00000123/saved_model.pb"]
    }
    flat = store("gs://models/flat/", tmp_path)
    assert flat.list_versions() == [1]
    assert files_under(flat.fetch(1)) == {
        "config.json": FILES["flat/config.json"],
        "weights.bin": FILES["flat/weights.bin"],
    }


def test_a_restarted_replica_downloads_nothing(proxy: CountingProxy, tmp_path: Path) -> None:
    first = store("gs://models/digits", tmp_path)
    first.list_versions()
    path = first.fetch(2)
    assert len(proxy.media()) == 2
    proxy.reset_counts()

    restarted = store("gs://models/digits", tmp_path)  # a new store: what a new replica makes
    assert restarted.list_versions() == [1, 2]
    assert restarted.fetch(2) == path
    assert proxy.media() == []
    assert sum(s.body_bytes for s in proxy.seen() if s.is_media) == 0
    assert any("delimiter" in s.query for s in proxy.seen())  # it did talk to GCS, to list


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("gs://no-such-bucket/digits", "gs://no-such-bucket/digits not found"),
        ("gs://models/no-such-model", "gs://models/no-such-model not found"),
    ],
)
def test_a_missing_bucket_or_prefix_is_a_clear_error(
    proxy: CountingProxy, tmp_path: Path, uri: str, message: str
) -> None:
    with pytest.raises(ModelLoadError, match=message):
        store(uri, tmp_path).list_versions()


def test_a_missing_version_is_a_clear_error(proxy: CountingProxy, tmp_path: Path) -> None:
    models = store("gs://models/digits", tmp_path)
    models.list_versions()
    with pytest.raises(ModelLoadError, match="version 7 not found in gs://models/digits"):
        models.fetch(7)


def test_transient_errors_are_retried_and_a_reset_download_resumes(
    proxy: CountingProxy, tmp_path: Path
) -> None:
    # One transfer at a time, in listing order: assets/vocab.txt, then model.bin.
    proxy.inject("503", "none", "reset", "503")
    path = store("gs://models/digits", tmp_path, download_workers=1).fetch(2)
    assert files_under(path)["model.bin"] == FILES["digits/2/model.bin"]
    seen = [(s.object_name, s.range, s.status) for s in proxy.media()]
    assert [status for _, _, status in seen].count(503) == 2 and proxy.pending_faults() == 0
    # After the reset, the rest of model.bin was asked for from where its bytes stopped.
    last = seen[-1]
    assert last[0] == "digits/2/model.bin" and last[2] == 206, seen
    assert last[1].startswith("bytes=") and not last[1].startswith("bytes=0-"), seen


def test_a_lasting_outage_gives_up_with_bounded_retries(
    proxy: CountingProxy, tmp_path: Path
) -> None:
    proxy.inject(*["503"] * 1000)
    models = store("gs://models/digits", tmp_path, retry_timeout_s=1.5, download_workers=1)
    with pytest.raises(ModelLoadError) as error:
        models.fetch(2)
    message = str(error.value)
    assert "downloading gs://models/digits/2/" in message and "HTTP 503" in message
    assert "gave up after" in message
    assert 2 <= len(proxy.media()) < 20  # retried, with backoff, not hammered
    assert models.repo.cached_versions() == []


def test_corruption_in_transit_is_discarded_and_downloaded_again(
    proxy: CountingProxy, tmp_path: Path
) -> None:
    proxy.inject("corrupt")
    path = store("gs://models/digits", tmp_path, download_workers=1).fetch(2)
    assert files_under(path)["model.bin"] == FILES["digits/2/model.bin"]
    names = [s.object_name for s in proxy.media()]
    assert len(names) == 3 and len(set(names)) == 2  # the corrupted one was fetched twice


def test_an_object_corrupted_at_rest_is_refused_and_never_cached(
    gcs: tuple[Emulator, CountingProxy], proxy: CountingProxy, tmp_path: Path
) -> None:
    emulator = gcs[0]
    emulator.upload_bytes(BUCKET, "rotten/1/model.bin", os.urandom(10_000))
    emulator.upload_bytes(BUCKET, "rotten/1/config.json", b"{}")
    emulator.corrupt_at_rest(BUCKET, "rotten/1/model.bin")
    models = store("gs://models/rotten", tmp_path)
    with pytest.raises(ModelLoadError) as error:
        models.fetch(1)
    message = str(error.value)
    assert message.startswith("checksum mismatch: gs://models/rotten/1/model.bin is corrupted")
    assert "crc32c of the downloaded bytes" in message and "is not served" in message
    assert len(proxy.media("rotten/1/model.bin")) == MAX_CHECKSUM_ATTEMPTS
    assert models.repo.cached_versions() == []
    assert list((tmp_path / "tmp").iterdir()) == []  # the bad bytes are gone from disk too


def test_large_objects_download_as_parallel_slices(proxy: CountingProxy, tmp_path: Path) -> None:
    models = GCSStore(
        "gs://models/big", StoreSpec(cache_dir=str(tmp_path), download_workers=4), 64 * 1024
    )
    proxy.hold_downloads()
    fetched: list[Path] = []
    worker = threading.Thread(target=lambda: fetched.append(models.fetch(1)))
    worker.start()
    try:
        # Four transfers wait at the proxy at once: they run in parallel, not one by one.
        wait_for(lambda: proxy.in_flight >= 4, 60, "4 parallel slice downloads")
    finally:
        proxy.release_downloads()
        worker.join(60)
    assert files_under(fetched[0]) == {"weights.bin": FILES["big/1/weights.bin"]}
    ranges = sorted(s.range for s in proxy.media())
    assert len(ranges) == 11  # 700,000 bytes in 64 KiB slices
    assert proxy.max_in_flight == 4


FETCH_IN_CHILD = """
import sys
from serve_app.config import StoreSpec
from serve_app.store.gcs import GCSStore
store = GCSStore(sys.argv[1], StoreSpec(cache_dir=sys.argv[2]))
version = store.list_versions()[-1]
print(store.fetch(version), flush=True)
"""


def test_two_processes_on_one_machine_download_once(proxy: CountingProxy, tmp_path: Path) -> None:
    proxy.hold_downloads()
    env = {**os.environ, "STORAGE_EMULATOR_HOST": proxy.url}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", FETCH_IN_CHILD, "gs://models/digits", str(tmp_path)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        # Both have listed the versions, and one is downloading (held at the proxy).
        wait_for(
            lambda: proxy.in_flight >= 1 and sum("delimiter" in s.query for s in proxy.seen()) >= 2,
            60,
            "both processes to list and one to start downloading",
        )
    finally:
        proxy.release_downloads()
    outputs = [child.communicate(timeout=120) for child in children]
    assert all(child.returncode == 0 for child in children), outputs
    paths = {out.strip() for out, _ in outputs}
    assert len(paths) == 1 and Path(paths.pop()).is_dir()
    downloads = sorted(s.object_name for s in proxy.media())
    assert downloads == ["digits/2/assets/vocab.txt", "digits/2/model.bin"]


def test_unreachable_gcs_serves_the_newest_cached_version_and_says_so(
    proxy: CountingProxy, tmp_path: Path
) -> None:
    online = store("gs://models/digits", tmp_path)
    online.fetch(1)
    online.fetch(2)
    proxy.stop()

    offline = store("gs://models/digits", tmp_path, retry_timeout_s=1)
    assert offline.list_versions() == [1, 2]  # what the cache holds
    path = offline.fetch(2)
    assert files_under(path)["model.bin"] == FILES["digits/2/model.bin"]
    notice = store_notice(offline)
    assert notice.startswith("serving version 2 from cache: gs://models/digits is unreachable")
    assert "Connection refused" in notice


def test_unreachable_gcs_with_nothing_cached_is_a_clear_error(
    proxy: CountingProxy, tmp_path: Path
) -> None:
    proxy.stop()
    with pytest.raises(ModelLoadError) as error:
        store("gs://models/digits", tmp_path, retry_timeout_s=1).list_versions()
    assert str(error.value).startswith("gs://models/digits is unreachable (ConnectionError")
    assert f"no version of it is cached in {tmp_path}" in str(error.value)


def test_downloading_a_new_version_evicts_an_unused_old_one(
    proxy: CountingProxy, tmp_path: Path
) -> None:
    limit = 301_000  # room for version 2 (300,013 bytes) alone, not with version 1 (2,000)
    old = store("gs://models/digits", tmp_path, max_cache_bytes=limit)
    old.fetch(1)
    repo = old.repo
    del old  # the replica that used version 1 goes away, and with it its lease
    gc.collect()
    store("gs://models/digits", tmp_path, max_cache_bytes=limit).fetch(2)
    assert repo.cached_versions() == [2]


def test_a_version_in_use_is_not_evicted(proxy: CountingProxy, tmp_path: Path) -> None:
    limit = 301_000
    running = store("gs://models/digits", tmp_path, max_cache_bytes=limit)
    running.fetch(1)  # still held by `running`
    store("gs://models/digits", tmp_path, max_cache_bytes=limit).fetch(2)
    assert running.repo.cached_versions() == [1, 2]


def test_object_names_that_would_escape_the_cache_are_refused(tmp_path: Path) -> None:
    # The memory backend keeps names verbatim, as GCS does; the filesystem one normalises them.
    with gcs_emulator(tmp_path / "mem", backend="memory") as (emulator, proxy):
        emulator.create_bucket(BUCKET)
        emulator.upload_bytes(BUCKET, "evil/1/model.bin", b"fine")
        emulator.upload_bytes(BUCKET, "evil/1/../../../escaped.txt", b"evil")
        os.environ["STORAGE_EMULATOR_HOST"] = proxy.url
        try:
            models = store("gs://models/evil", tmp_path / "cache")
            with pytest.raises(ModelLoadError) as error:
                models.fetch(1)
            assert "refusing object 'evil/1/../../../escaped.txt'" in str(error.value)
        finally:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        assert proxy.media() == []  # refused at listing, before any byte was fetched
    assert not list(tmp_path.rglob("escaped.txt"))


def test_the_store_recovers_on_the_next_listing_that_works(
    gcs: tuple[Emulator, CountingProxy], proxy: CountingProxy, tmp_path: Path
) -> None:
    emulator = gcs[0]
    first, second = os.urandom(3_000), os.urandom(4_000)
    emulator.upload_bytes(BUCKET, "recovering/1/model.bin", first)
    models = store("gs://models/recovering", tmp_path, retry_timeout_s=1)
    assert models.list_versions() == [1]
    models.fetch(1)

    proxy.inject_listing("reset", *["503"] * 1000)  # GCS cannot be listed for a while
    assert models.list_versions() == [1]  # the cached versions, instead
    assert models.fetch(1) is not None
    assert store_notice(models).startswith("serving version 1 from cache")
    listed = [s.status for s in proxy.seen() if s.is_listing]
    assert listed[-1] == 503 and proxy.pending_listing_faults() > 0

    proxy.clear_faults()  # GCS is back, and a new version was published meanwhile
    emulator.upload_bytes(BUCKET, "recovering/2/model.bin", second)
    assert models.list_versions() == [1, 2]
    assert files_under(models.fetch(2)) == {"model.bin": second}
    assert store_notice(models) == ""


def test_a_version_notice_follows_the_store_as_it_stands_now(
    proxy: CountingProxy, tmp_path: Path
) -> None:
    # What a host re-reads after each listing, so a status stops saying "served from cache"
    # once GCS answers again.
    models = store("gs://models/digits", tmp_path, retry_timeout_s=1)
    models.fetch(1)
    proxy.inject_listing(*["503"] * 1000)
    models.list_versions()
    notice = store_notice(models, 1)
    assert notice.startswith("serving version 1 from cache: gs://models/digits is unreachable")
    assert "HTTP 503" in notice
    proxy.clear_faults()
    models.list_versions()
    assert store_notice(models, 1) == ""


def test_pool_discovery_reads_every_page_of_the_listing(tmp_path: Path) -> None:
    # A console "folder" placeholder sits directly under the pool's prefix, and there are more
    # models than fit in one page of a GCS listing (1,000 entries). The memory backend keeps
    # the placeholder object (the filesystem backend cannot store a name ending in "/").
    names = [f"tenant-{i:04d}" for i in range(1001)]
    with gcs_emulator(tmp_path / "mem", backend="memory") as (emulator, proxy):
        emulator.create_bucket(BUCKET)
        emulator.upload_bytes(BUCKET, "pool/", b"")
        bucket = emulator.client().bucket(BUCKET)
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda name: bucket.blob(f"pool/{name}/1/model.bin").upload_from_string(b"x"),
                    names,
                )
            )
        os.environ["STORAGE_EMULATOR_HOST"] = proxy.url
        try:
            found = list_pool_models("gs://models/pool", StoreSpec(cache_dir=str(tmp_path / "c")))
        finally:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        pages = [s for s in proxy.seen() if s.is_listing]
    assert found == names
    assert len(pages) == 2 and "pageToken=" in pages[1].query  # it took the second page


def test_a_cached_version_a_power_loss_zeroed_is_downloaded_again(
    proxy: CountingProxy, tmp_path: Path
) -> None:
    path = store("gs://models/digits", tmp_path).fetch(2)
    # What a power loss leaves of a version committed without fsync (as older code did):
    # no "committed" marker, and a file of the right size holding zeros.
    (path.parent / "committed").unlink(missing_ok=True)
    (path / "model.bin").write_bytes(bytes(len(FILES["digits/2/model.bin"])))
    proxy.reset_counts()

    again = store("gs://models/digits", tmp_path).fetch(2)  # a replica starting after the boot
    assert files_under(again)["model.bin"] == FILES["digits/2/model.bin"]
    assert sorted(s.object_name for s in proxy.media()) == [
        "digits/2/assets/vocab.txt",
        "digits/2/model.bin",
    ]
    assert (again.parent / "committed").is_file()


def lease_is_free(models: GCSStore, version: int) -> bool:
    """Whether an evictor could take ``version``'s lease now (nobody holds it)."""
    lock = FileLock(models.repo.path / f"{version}.lease")
    taken = lock.acquire(blocking=False)
    lock.release()
    return taken


def test_a_failed_fetch_releases_the_lease_it_took(proxy: CountingProxy, tmp_path: Path) -> None:
    proxy.inject(*["503"] * 1000)
    models = store("gs://models/digits", tmp_path, retry_timeout_s=1, download_workers=1)
    with pytest.raises(ModelLoadError, match="HTTP 503"):
        models.fetch(2)
    assert lease_is_free(models, 2)

    proxy.clear_faults()
    models.fetch(2)
    assert not lease_is_free(models, 2)  # held while the version serves
    models.release(2)  # what the host calls when the version unloads, or fails to load
    assert lease_is_free(models, 2)


def test_a_half_uploaded_version_that_failed_to_load_is_listed_and_downloaded_again(
    gcs: tuple[Emulator, CountingProxy], proxy: CountingProxy, tmp_path: Path
) -> None:
    emulator = gcs[0]
    weights = os.urandom(4_000)
    emulator.upload_bytes(BUCKET, "partial/1/config.json", b'{"layers": 2}')  # upload under way
    models = store("gs://models/partial", tmp_path)
    assert models.list_versions() == [1]
    assert files_under(models.fetch(1)) == {"config.json": b'{"layers": 2}'}
    models.release(1)  # what the host does when the version fails to load...
    models.discard(1)  # ...and then this: the copy may be of a half-uploaded version
    emulator.upload_bytes(BUCKET, "partial/1/weights.bin", weights)  # the upload completes
    proxy.reset_counts()

    retried = models.fetch(1)  # the host's retry (10 s later)
    assert files_under(retried) == {"config.json": b'{"layers": 2}', "weights.bin": weights}
    assert sorted(s.object_name for s in proxy.media()) == [
        "partial/1/config.json",
        "partial/1/weights.bin",
    ]
    assert any(s.is_listing for s in proxy.seen())  # listed again, not from the old listing
    proxy.reset_counts()
    restarted = store("gs://models/partial", tmp_path)  # a replica started later reuses it
    assert restarted.fetch(1) == retried
    assert proxy.media() == []


def test_a_copy_another_replica_serves_is_not_dropped_when_a_load_fails(
    gcs: tuple[Emulator, CountingProxy], proxy: CountingProxy, tmp_path: Path
) -> None:
    serving = store("gs://models/digits", tmp_path)
    path = serving.fetch(2)  # holds the version's lease while it serves
    failing = store("gs://models/digits", tmp_path)
    assert failing.fetch(2) == path
    failing.release(2)
    failing.discard(2)  # this replica's load failed (say, out of memory): the other serves it
    assert files_under(path) == {
        "model.bin": FILES["digits/2/model.bin"],
        "assets/vocab.txt": FILES["digits/2/assets/vocab.txt"],
    }
    serving.release(2)
    failing.discard(2)
    assert not path.exists()
