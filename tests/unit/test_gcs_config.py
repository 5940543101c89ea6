"""The app-level ``store`` block: strict keys, defaults, and how it reaches each replica."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.app import spec_for_replica
from serve_app.config import ConfigError, StoreSpec, parse_app_config
from serve_app.errors import ModelLoadError
from serve_app.store import LocalStore, open_store, store_notice
from serve_app.store.gcs import GCSStore

MODEL = {"name": "digits", "framework": "tensorflow", "uri": "gs://models/digits"}


def test_store_defaults() -> None:
    store = parse_app_config({"models": [MODEL]}).store
    assert store == StoreSpec(
        cache_dir=None, max_cache_bytes=None, download_workers=8, retry_timeout_s=60.0
    )


def test_store_keys_are_strict_and_checked() -> None:
    with pytest.raises(ConfigError) as error:
        parse_app_config({"models": [MODEL], "store": {"cache_dri": "/x", "download_workers": 0}})
    message = str(error.value)
    assert "store.cache_dri: unknown key 'cache_dri'" in message
    assert "(allowed: cache_dir, max_cache_bytes, download_workers, retry_timeout_s)" in message
    assert "store.download_workers: Input should be greater than or equal to 1" in message


def test_store_settings_travel_to_every_replica(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = parse_app_config(
        {
            "models": [MODEL],
            "store": {"cache_dir": "cache", "max_cache_bytes": 10**9, "download_workers": 4},
        }
    )
    settings = spec_for_replica(config.models[0], config.store)
    assert settings["uri"] == "gs://models/digits"  # remote URIs are left as written
    assert settings["store"] == {
        "cache_dir": str(tmp_path / "cache"),  # relative to where Serve was started
        "max_cache_bytes": 10**9,
        "download_workers": 4,
        "retry_timeout_s": 60.0,
    }
    home = parse_app_config({"models": [MODEL], "store": {"cache_dir": "~/models"}})
    assert spec_for_replica(home.models[0], home.store)["store"]["cache_dir"] == "~/models"
    unset = parse_app_config({"models": [MODEL]})
    assert spec_for_replica(unset.models[0], unset.store)["store"]["cache_dir"] is None


def test_open_store_by_scheme(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    gcs = open_store("gs://models/digits", StoreSpec(cache_dir=str(tmp_path)))
    assert isinstance(gcs, GCSStore) and gcs.cache.root == tmp_path
    assert store_notice(gcs) == "" and store_notice(open_store(str(tmp_path))) == ""
    with pytest.raises(ModelLoadError, match="invalid bucket name 'Models'"):
        open_store("gs://Models/digits", StoreSpec(cache_dir=str(tmp_path)))
