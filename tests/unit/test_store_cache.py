"""The persistent model cache: layout, atomic install, leases across processes, LRU eviction."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import google_crc32c
import pytest

from serve_app.store.cache import CACHE_DIR_ENV, ModelCache, RepositoryCache, resolve_cache_dir
from serve_app.store.integrity import Expected, mismatch
from serve_app.store.locks import FileLock

ROOT = Path(__file__).resolve().parents[2]
HOLD_LOCK = """
import sys
from pathlib import Path
from serve_app.store.locks import FileLock
lock = FileLock(Path(sys.argv[1]), shared=sys.argv[2] == "shared")
lock.acquire()
print("locked", flush=True)
sys.stdin.read()  # hold until the test closes our stdin (or kills us)
"""


@contextmanager
def lock_held_by_another_process(path: Path, shared: bool = True) -> Iterator[subprocess.Popen]:
    """A separate process (like another replica) holding a flock on ``path``."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path), "shared" if shared else "exclusive"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        yield child
    finally:
        child.kill()
        child.wait()


def install(repo: RepositoryCache, version: int, files: dict[str, bytes]) -> Path:
    """Stage ``files`` and commit them as ``version``, the way a download does."""
    with repo.staging(version) as staging:
        records = []
        for name, data in files.items():
            target = staging / "model" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            records.append({"path": name, "size": len(data), "crc32c": None, "md5": None})
        return repo.commit(staging, f"gs://b/{repo.path.name}", version, records)


def set_last_used(path: Path, when: float) -> None:
    os.utime(path / "last_used", (when, when))


def test_cache_dir_comes_from_config_then_env_then_user_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "from-env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir(str(tmp_path / "from-config")) == tmp_path / "from-config"
    assert resolve_cache_dir(None) == tmp_path / "from-env"
    monkeypatch.delenv(CACHE_DIR_ENV)
    assert resolve_cache_dir(None) == tmp_path / "xdg" / "serve-app"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_cache_dir(None) == tmp_path / "home" / ".cache" / "serve-app"
    assert resolve_cache_dir("~/models") == tmp_path / "home" / "models"


def test_a_version_appears_only_when_committed(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    repo = cache.repository(("b", "m-0123"))
    with repo.staging(2) as staging:
        (staging / "model" / "weights.bin").write_bytes(b"12345")
        # Half-written: invisible to lookups and to the offline fallback.
        assert repo.lookup(2) is None and repo.cached_versions() == []
        path = repo.commit(
            staging, "gs://b/m", 2, [{"path": "weights.bin", "size": 5, "crc32c": None}]
        )
    assert path == tmp_path / "gcs" / "b" / "m-0123" / "2"
    entry = repo.lookup(2)
    assert entry is not None and entry.model_dir == path / "model"
    assert (entry.model_dir / "weights.bin").read_bytes() == b"12345"
    assert (entry.uri, entry.version, entry.size) == ("gs://b/m", 2, 5)
    assert repo.cached_versions() == [2]
    assert list((tmp_path / "tmp").iterdir()) == []  # the staging directory moved, not copied
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["files"] == [{"path": "weights.bin", "size": 5, "crc32c": None}]


def test_a_failed_download_leaves_nothing_behind(tmp_path: Path) -> None:
    repo = ModelCache(tmp_path).repository(("b", "m-0123"))
    with pytest.raises(RuntimeError, match="network died"), repo.staging(1) as staging:
        (staging / "model" / "partial.bin").write_bytes(b"half")
        raise RuntimeError("network died")
    assert repo.lookup(1) is None
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_dead_downloads_staging_is_cleaned_by_the_next_downloader(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    repo = cache.repository(("b", "m-0123"))
    other = cache.repository(("b", "other-0456"))
    stale = cache.new_tmp_dir(repo._staging_prefix(3))
    stale.mkdir()
    unrelated = cache.new_tmp_dir(other._staging_prefix(3))
    unrelated.mkdir()
    with repo.download_lock(3, "gs://b/m version 3"):
        assert not stale.exists()
    assert unrelated.exists()


def test_a_damaged_copy_is_not_reused_and_can_be_discarded(tmp_path: Path) -> None:
    repo = ModelCache(tmp_path).repository(("b", "m-0123"))
    path = install(repo, 1, {"a.bin": b"abcdef", "dir/b.bin": b"xyz"})
    assert repo.lookup(1) is not None
    (path / "model" / "dir" / "b.bin").write_bytes(b"xy")  # truncated behind our back
    assert repo.lookup(1) is None
    repo.discard(1)
    assert not path.exists() and repo.cached_versions() == []


def test_a_manifest_path_that_escapes_counts_as_damage(tmp_path: Path) -> None:
    repo = ModelCache(tmp_path).repository(("b", "m-0123"))
    path = install(repo, 1, {"a.bin": b"abc"})
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"][0]["path"] = "../../../../etc/hostname"
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert repo.lookup(1) is None


def test_eviction_removes_least_recently_used_versions_down_to_the_limit(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, max_bytes=250)
    repo = cache.repository(("b", "m-0123"))
    paths = {v: install(repo, v, {"w.bin": b"x" * 100}) for v in (1, 2, 3)}
    for version, when in ((1, 1000), (2, 3000), (3, 2000)):
        set_last_used(paths[version], when)

    cache.make_room()  # 300 bytes > 250: the least recently used (1) goes
    assert repo.cached_versions() == [2, 3]
    cache.make_room(incoming=100)  # room for 100 more: 3 (older than 2) goes
    assert repo.cached_versions() == [2]
    assert [p.name for p in (tmp_path / "tmp").iterdir()] == []


def test_eviction_skips_versions_a_live_replica_holds(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, max_bytes=150)
    repo = cache.repository(("b", "m-0123"))
    old = install(repo, 1, {"w.bin": b"x" * 100})
    new = install(repo, 2, {"w.bin": b"x" * 100})
    set_last_used(old, 1000)
    set_last_used(new, 2000)
    with lock_held_by_another_process(repo.path / "1.lease", shared=True) as replica:
        cache.make_room()
        assert repo.cached_versions() == [1]  # 1 is in use, so the newer 2 went instead
        replica.kill()  # the replica dies: the kernel drops its lease with its process
        replica.wait()
        install(repo, 2, {"w.bin": b"x" * 100})
        set_last_used(repo.path / "2", 3000)
        cache.make_room()
        assert repo.cached_versions() == [2]


def test_a_lease_in_this_process_also_protects(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, max_bytes=0)
    repo = cache.repository(("b", "m-0123"))
    install(repo, 1, {"w.bin": b"x" * 10})
    lease = repo.lease(1)
    cache.make_room()
    assert repo.cached_versions() == [1]
    lease.release()
    cache.make_room()
    assert repo.cached_versions() == []


def test_no_limit_means_no_eviction(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, max_bytes=None)
    repo = cache.repository(("b", "m-0123"))
    install(repo, 1, {"w.bin": b"x" * 1000})
    cache.make_room(incoming=10**12)
    assert repo.cached_versions() == [1]


def test_download_lock_excludes_other_processes_until_they_exit(tmp_path: Path) -> None:
    path = tmp_path / "1.download.lock"
    with lock_held_by_another_process(path, shared=False) as downloader:
        assert not FileLock(path).acquire(blocking=False)
        assert not FileLock(path, shared=True).acquire(blocking=False)
        downloader.kill()
        downloader.wait()
    lock = FileLock(path)
    assert lock.acquire(blocking=False)
    lock.release()


def test_shared_leases_coexist_but_exclude_an_evictor(tmp_path: Path) -> None:
    path = tmp_path / "1.lease"
    with lock_held_by_another_process(path, shared=True):
        mine = FileLock(path, shared=True)
        assert mine.acquire(blocking=False)
        assert not FileLock(path).acquire(blocking=False)
        mine.release()


def test_unwritable_cache_dir_is_a_clear_load_error(tmp_path: Path) -> None:
    from serve_app.errors import ModelLoadError

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ModelLoadError, match="cannot create the model cache directory"):
        ModelCache(blocker / "cache")


def _b64_crc32c(data: bytes) -> str:
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


def test_integrity_check_against_gcs_checksums(tmp_path: Path) -> None:
    data = b"model weights " * 1000
    path = tmp_path / "w.bin"
    path.write_bytes(data)
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    assert mismatch(path, Expected(len(data), _b64_crc32c(data), md5)) is None
    assert mismatch(path, Expected(len(data), None, md5)) is None  # composite objects: md5 only
    assert mismatch(path, Expected(len(data))) is None  # neither: size only

    corrupted = bytearray(data)
    corrupted[7] ^= 1
    path.write_bytes(bytes(corrupted))
    crc_problem = mismatch(path, Expected(len(data), _b64_crc32c(data), md5))
    assert crc_problem is not None and crc_problem.startswith("crc32c of the downloaded bytes")
    md5_problem = mismatch(path, Expected(len(data), None, md5))
    assert md5_problem is not None and md5_problem.startswith("md5 of the downloaded bytes")
    path.write_bytes(data[:-1])
    assert mismatch(path, Expected(len(data), _b64_crc32c(data))) == (
        f"size is {len(data) - 1} bytes, GCS says {len(data)}"
    )


# --- crashes and power loss --------------------------------------------------------------


def install_checked(repo: RepositoryCache, version: int, files: dict[str, bytes]) -> Path:
    """Like ``install``, with the crc32c that GCS would report for each file."""
    with repo.staging(version) as staging:
        records = []
        for name, data in files.items():
            target = staging / "model" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            records.append({"path": name, "size": len(data), "crc32c": _b64_crc32c(data)})
        return repo.commit(staging, f"gs://b/{repo.path.name}", version, records)


def test_commit_flushes_every_byte_before_the_rename_and_the_rename_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A power loss can only be simulated by watching what reaches the disk: which paths are
    # fsynced, in what order relative to the rename that makes the version visible.
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(source: object, target: object) -> None:
        events.append(("rename", str(target)))
        real_rename(source, target)

    repo = ModelCache(tmp_path).repository(("b", "m-0123"))
    with repo.staging(1) as staging:
        (staging / "model" / "sub").mkdir()
        (staging / "model" / "sub" / "w.bin").write_bytes(b"weights")
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "rename", rename)
        target = repo.commit(staging, "gs://b/m", 1, [{"path": "sub/w.bin", "size": 7}])
        staged = str(staging)
    monkeypatch.undo()

    renamed = events.index(("rename", str(target)))
    before = {path for kind, path in events[:renamed] if kind == "fsync"}
    after = {path for kind, path in events[renamed:] if kind == "fsync"}
    # Every file and directory of the version, the manifest included, under its staged name.
    for relative in ("model/sub/w.bin", "model/sub", "model", "manifest.json", "committed", ""):
        assert str(Path(staged, relative)) in before, (relative, events)
    # Then the rename itself, and the directories a fresh cache made to receive it.
    for directory in (repo.path, repo.path.parent, tmp_path / "gcs", tmp_path):
        assert str(directory) in after, (directory, events)
    assert (target / "committed").is_file()


def test_a_version_not_known_to_be_committed_has_its_checksums_checked(tmp_path: Path) -> None:
    repo = ModelCache(tmp_path).repository(("b", "m-0123"))
    weights = os.urandom(4096)
    # Two versions as unfsynced commits leave them after a power loss: no marker, and one
    # of them with a file of the right size that holds zeros.
    good = install_checked(repo, 1, {"w.bin": weights, "config.json": b"{}"})
    zeroed = install_checked(repo, 2, {"w.bin": weights, "config.json": b"{}"})
    for path in (good, zeroed):
        (path / "committed").unlink(missing_ok=True)
    (zeroed / "model" / "w.bin").write_bytes(bytes(len(weights)))

    assert repo.lookup(2) is None  # same sizes, wrong bytes: never served
    entry = repo.lookup(1)
    assert entry is not None and (entry.model_dir / "w.bin").read_bytes() == weights
    assert (good / "committed").is_file()  # checked once, then known to be committed
    assert not (zeroed / "committed").exists()


def test_a_committed_version_is_trusted_on_sizes(tmp_path: Path) -> None:
    # The checksum pass is for versions an unclean shutdown may have left, not every reuse.
    repo = ModelCache(tmp_path).repository(("b", "m-0123"))
    path = install_checked(repo, 1, {"w.bin": b"abc"})
    (path / "model" / "w.bin").write_bytes(b"xyz")
    assert repo.lookup(1) is not None
    (path / "committed").unlink(missing_ok=True)
    assert repo.lookup(1) is None


def test_a_version_with_an_unreadable_manifest_is_not_offered_as_cached(tmp_path: Path) -> None:
    repo = ModelCache(tmp_path).repository(("b", "m-0123"))
    install(repo, 1, {"w.bin": b"abc"})
    path = install(repo, 2, {"w.bin": b"abc"})
    (path / "manifest.json").write_bytes(bytes(200))  # zeros where the manifest was
    assert repo.cached_versions() == [1]
    assert repo.lookup(2) is None


DIE_MIDWAY = """
import sys
from pathlib import Path
from serve_app.store.cache import ModelCache
cache = ModelCache(Path(sys.argv[1]))
repo = cache.repository(("b", "m-0123"))
version = int(sys.argv[2])
with repo.download_lock(version, "test"), repo.staging(version) as staging:
    (staging / "model" / "w.bin").write_bytes(b"half a download")
    trash = cache.new_tmp_dir("trash.")  # an evicted version, renamed, not yet deleted
    (trash / "model").mkdir(parents=True)
    (trash / "model" / "w.bin").write_bytes(b"old version")
    print(staging, trash, flush=True)
    sys.stdin.read()  # downloading until the test kills us
"""


@contextmanager
def process_midway(root: Path, version: int) -> Iterator[tuple[subprocess.Popen, Path, Path]]:
    """A separate process downloading ``version`` (staging written, lock held), which has also
    renamed an evicted version into the trash."""
    child = subprocess.Popen(
        [sys.executable, "-c", DIE_MIDWAY, str(root), str(version)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        staging, trash = child.stdout.readline().split()
        yield child, Path(staging), Path(trash)
    finally:
        child.kill()
        child.wait()


def test_opening_the_cache_removes_what_killed_processes_left(tmp_path: Path) -> None:
    # The live one starts first: opening the cache, the other would clean up after it.
    with (
        process_midway(tmp_path, 4) as (_, live_staging, _),
        process_midway(tmp_path, 3) as (dead, dead_staging, dead_trash),
    ):
        dead.kill()  # kill -9: no cleanup of its own runs
        dead.wait()
        assert dead_staging.is_dir() and dead_trash.is_dir()
        ModelCache(tmp_path)  # what a replica does when it starts
        assert not dead_staging.exists() and not dead_trash.exists()
        # A download still running in another process keeps its staging directory.
        assert (live_staging / "model" / "w.bin").read_bytes() == b"half a download"


def test_a_staging_directory_of_a_bucket_named_trash_is_not_taken_for_trash(
    tmp_path: Path,
) -> None:
    repo = ModelCache(tmp_path).repository(("trash", "m-0123"))
    with repo.download_lock(1, "test"), repo.staging(1) as staging:
        ModelCache(tmp_path, max_bytes=0).make_room()  # an evictor empties the trash first
        assert staging.is_dir()
