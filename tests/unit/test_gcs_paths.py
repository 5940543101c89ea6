"""gs:// URIs and object names: nothing from a bucket becomes a path unchecked."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from serve_app.errors import ModelLoadError
from serve_app.store.gcs_paths import (
    GcsLocation,
    check_no_conflicts,
    parse_gcs_uri,
    relative_object_path,
)


@pytest.mark.parametrize(
    ("uri", "bucket", "prefix", "canonical"),
    [
        ("gs://models/digits", "models", "digits", "gs://models/digits"),
        ("gs://models/team/digits/", "models", "team/digits", "gs://models/team/digits"),
        ("gs://my.bucket_1-x", "my.bucket_1-x", "", "gs://my.bucket_1-x"),
        ("gs://models/", "models", "", "gs://models"),
    ],
)
def test_parse_valid_uris(uri: str, bucket: str, prefix: str, canonical: str) -> None:
    location = parse_gcs_uri(uri)
    assert (location.bucket, location.prefix, location.uri) == (bucket, prefix, canonical)


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("gs://", "invalid bucket name ''"),
        ("gs://UPPER/x", "invalid bucket name 'UPPER'"),
        ("gs://ab/x", "invalid bucket name 'ab'"),
        ("gs://../x", "invalid bucket name '..'"),
        ("gs://-models/x", "invalid bucket name '-models'"),
        ("gs://models/a/../b", "'..' path segments"),
        ("gs://models/a//b", "empty"),
        ("gs://models/./b", "'.'"),
        ("s3://models/a", "not a gs:// URI"),
    ],
)
def test_parse_rejects_bad_uris(uri: str, fragment: str) -> None:
    with pytest.raises(ModelLoadError) as error:
        parse_gcs_uri(uri)
    assert fragment in str(error.value)


def test_dir_prefix_and_cache_key() -> None:
    location = GcsLocation("models", "team/digits")
    assert location.dir_prefix() == "team/digits/"
    assert location.dir_prefix("2") == "team/digits/2/"
    assert GcsLocation("models", "").dir_prefix() == ""
    assert GcsLocation("models", "").dir_prefix("2") == "2/"

    bucket, slug = location.cache_key()
    assert bucket == "models"
    assert slug.startswith("team__digits-") and "/" not in slug
    # Prefixes whose readable slugs collide still get distinct keys.
    assert GcsLocation("models", "a/b").cache_key() != GcsLocation("models", "a__b").cache_key()
    assert GcsLocation("models", "").cache_key()[1].startswith("_root-")
    odd = GcsLocation("models", "we ird/..x/ü").cache_key()[1]
    assert "/" not in odd and odd not in ("", ".", "..")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("m/1/model.keras", PurePosixPath("model.keras")),
        ("m/1/variables/variables.index", PurePosixPath("variables/variables.index")),
        ("m/1/..hidden", PurePosixPath("..hidden")),
        ("m/1/", None),  # the version "folder" itself
        ("m/1/variables/", None),  # a folder placeholder
    ],
)
def test_object_names_map_to_relative_paths(name: str, expected: PurePosixPath | None) -> None:
    assert relative_object_path(name, "m/1/") == expected


@pytest.mark.parametrize(
    "name",
    [
        "m/1/../../etc/passwd",
        "m/1/a/../../x",
        "m/1//etc/passwd",  # an empty segment: "/etc/passwd" would be absolute
        "m/1/./x",
        "m/1/a\\..\\..\\x",
        "m/1/nul\x00byte",
        "m/1/" + "x" * 300,
    ],
)
def test_object_names_that_could_escape_are_refused(name: str) -> None:
    with pytest.raises(ModelLoadError, match="refusing object"):
        relative_object_path(name, "m/1/")


def test_object_outside_the_prefix_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="is not under"):
        relative_object_path("other/1/x", "m/1/")


def test_conflicting_listings_are_refused() -> None:
    check_no_conflicts([PurePosixPath("a"), PurePosixPath("b/c")], "gs://m/1/")
    with pytest.raises(ModelLoadError, match="both a file 'a' and a file 'a/b'"):
        check_no_conflicts([PurePosixPath("a"), PurePosixPath("a/b")], "gs://m/1/")
