"""Local model store: version directories, unversioned models, version policies."""

from pathlib import Path

import pytest

from serve_app.config import VersionPolicy
from serve_app.errors import ModelLoadError
from serve_app.fleet_status import summarize_failure
from serve_app.store import open_store, select_versions


def make_repo(root: Path, names: list[str]) -> Path:
    for name in names:
        (root / name).mkdir(parents=True)
    return root


def test_integer_directories_are_versions(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "m", ["1", "00000123", "2", "notes", "3x"])
    (repo / "7").write_text("a file, not a version")
    store = open_store(str(repo))
    assert store.list_versions() == [1, 2, 123]
    assert store.fetch(123) == repo / "00000123"
    assert open_store(f"file://{repo}").list_versions() == [1, 2, 123]


def test_unversioned_directory_is_version_one(tmp_path: Path) -> None:
    (tmp_path / "saved_model.pb").write_bytes(b"")
    store = open_store(str(tmp_path))
    assert store.list_versions() == [1]
    assert store.fetch(1) == tmp_path


def test_missing_repository_and_version(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        open_store(str(tmp_path / "nope")).list_versions()
    store = open_store(str(make_repo(tmp_path / "m", ["1"])))
    with pytest.raises(ModelLoadError, match="version 5 not found"):
        store.fetch(5)


def test_unsupported_scheme() -> None:
    with pytest.raises(ModelLoadError, match="unsupported model uri scheme 's3://'"):
        open_store("s3://bucket/model")


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({"latest": 1}, [5]),
        ({"latest": 2}, [3, 5]),
        ({"all": True}, [1, 3, 5]),
        ({"specific": [3, 1]}, [1, 3]),
    ],
)
def test_version_policies(policy: dict, expected: list[int]) -> None:
    assert select_versions([5, 1, 3], VersionPolicy(**policy)) == expected


def test_pinned_versions_not_in_the_repository_are_waited_for() -> None:
    assert select_versions([1, 3], VersionPolicy(specific=[3, 4])) == [3]
    assert select_versions([], VersionPolicy(latest=1)) == []


def test_failure_summary_drops_the_traceback() -> None:
    message = (
        "The deployment failed to start 3 times in a row. Error:\n"
        'Traceback (most recent call last):\n  File "/x.py", line 1, in <module>\n'
        "serve_app.errors.ModelLoadError: model 'm' version 1 at repo failed to load: boom\n"
    )
    assert summarize_failure(message) == "model 'm' version 1 at repo failed to load: boom"
    assert summarize_failure("") == "its replicas failed to start"
