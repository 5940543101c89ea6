"""Pool config, pool listing, name clashes and the ingress's catalog (no Ray needed)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from serve_app.app import check_pool_names, spec_for_replica
from serve_app.config import ConfigError, parse_app_config
from serve_app.pool_catalog import PoolCatalog, PoolView
from serve_app.store import list_pool_models


def pool(**overrides: Any) -> dict[str, Any]:
    return {"name": "tenants", "framework": "tensorflow", "uri": "pool", **overrides}


def model(**overrides: Any) -> dict[str, Any]:
    return {"name": "digits", "framework": "tensorflow", "uri": "models/digits", **overrides}


def test_a_fleet_of_pools_only_is_valid_and_members_inherit_the_pools_settings() -> None:
    config = parse_app_config({"pools": [pool(uri="gs://b/pool/", batching={"max_batch_size": 4})]})
    spec = config.pools[0]
    assert spec.max_models_per_replica == 8 and config.models == []
    member = spec.member_spec("tenant-1")
    assert member.uri == "gs://b/pool/tenant-1"
    assert member.batching.max_batch_size == 4 and member.framework == "tensorflow"
    settings = spec_for_replica(spec)
    assert settings["max_models_per_replica"] == 8 and settings["uri"] == "gs://b/pool/"


@pytest.mark.parametrize("name", ["../etc", "a/b", "Upper", "", ".hidden"])
def test_a_member_name_never_becomes_a_path_unchecked(name: str) -> None:
    spec = parse_app_config({"pools": [pool()]}).pools[0]
    with pytest.raises(ValueError, match="not a valid model name"):
        spec.member_spec(name)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "the fleet is empty"),
        ({"models": [], "pools": []}, "the fleet is empty"),
        ({"models": [model(name="tenants")], "pools": [pool()]}, "duplicate model name 'tenants'"),
        ({"pools": [pool(), pool(uri="elsewhere")]}, "duplicate model name 'tenants'"),
        (
            {"pools": [pool(max_models_per_replica=0)]},
            "pool 'tenants' (pools[0]): max_models_per_replica",
        ),
        ({"pools": [pool(labels={"stable": 1})]}, "pool 'tenants' (pools[0]): labels: unknown key"),
        ({"pools": [pool(framework="transformers")]}, "task is required"),
    ],
)
def test_bad_pool_configs_are_refused_with_the_reason(args: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_app_config(args)
    assert message in str(error.value)


def test_listing_a_pool_keeps_only_directories_named_like_models(tmp_path: Path) -> None:
    for name in ("tenant-1", "b.v2", "Upper", ".staging", "with space"):
        (tmp_path / name).mkdir()
    (tmp_path / "file-not-dir").write_text("")
    assert list_pool_models(str(tmp_path)) == ["b.v2", "tenant-1"]


def test_a_pool_model_named_like_a_dedicated_model_is_refused_at_build(tmp_path: Path) -> None:
    (tmp_path / "digits").mkdir()
    config = parse_app_config({"models": [model()], "pools": [pool(uri=str(tmp_path))]})
    with pytest.raises(ConfigError, match=r"model 'digits' .* has the name of the dedicated"):
        check_pool_names(config)
    missing = parse_app_config({"pools": [pool(uri=str(tmp_path / "nope"))]})
    with pytest.raises(ConfigError, match=r"pool 'tenants': model pool .* not found"):
        check_pool_names(missing)


class ListingHandle:
    """A stand-in for a pool deployment's handle: ``list_models.remote()`` and ``options``."""

    def __init__(self, models: list[str]) -> None:
        self.models = models
        self.list_models = self
        self.calls = 0

    def remote(self) -> Any:
        self.calls += 1

        async def listed() -> list[str]:
            return list(self.models)

        return listed()

    def options(self, multiplexed_model_id: str) -> tuple[str, str]:
        return ("routed", multiplexed_model_id)


def test_catalog_names_stay_unique_and_new_models_are_found_on_a_miss() -> None:
    first, second = ListingHandle(["a", "shared", "digits"]), ListingHandle(["shared", "b"])
    catalog = PoolCatalog(
        {
            "first": PoolView(first, "tensorflow", 60.0),  # type: ignore[arg-type]
            "second": PoolView(second, "feature-extraction", 60.0),  # type: ignore[arg-type]
        },
        dedicated={"digits"},
    )

    async def scenario() -> None:
        assert await catalog.lookup("shared") == ("first", ("routed", "shared"))
        assert await catalog.lookup("digits") is None  # a dedicated model's name wins
        assert catalog.kind("b") == "feature-extraction"
        assert catalog.names() == ["a", "b", "shared"]
        second.models.append("c")
        calls = second.calls
        assert await catalog.lookup("c") is None  # listed less than a second ago
        assert second.calls == calls
        for view in catalog.pools.values():
            view.listed_at -= 2  # a second later, a miss re-lists
        assert await catalog.lookup("c") == ("second", ("routed", "c"))

    asyncio.run(scenario())
