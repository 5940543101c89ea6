"""Model stores by URI scheme."""

from __future__ import annotations

from serve_app.config import StoreSpec
from serve_app.errors import ModelLoadError
from serve_app.model_names import MAX_MODEL_NAME_CHARS, MODEL_NAME
from serve_app.store.base import ModelStore, select_versions
from serve_app.store.local import LocalStore

__all__ = [
    "LocalStore",
    "ModelStore",
    "list_pool_models",
    "open_store",
    "select_versions",
    "store_notice",
]


def open_store(uri: str, settings: StoreSpec | None = None) -> ModelStore:
    """The store for ``uri``: a local path, ``file://`` URI, or ``gs://bucket/prefix``.

    ``settings`` (the app's ``store`` block) say where and how remote models are cached.
    """
    scheme, sep, _ = uri.partition("://")
    if not sep or scheme == "file":
        return LocalStore(uri)
    if scheme == "gs":
        # Imported here: the GCS client is heavy, and local-only fleets never need it.
        from serve_app.store.gcs import GCSStore

        return GCSStore(uri, settings)
    raise ModelLoadError(
        f"unsupported model uri scheme '{scheme}://' in {uri} (supported: local paths, file://,"
        " gs://)"
    )


def store_notice(store: ModelStore, version: int | None = None) -> str:
    """A note for the model's status about where its artifact came from ("" if nothing unusual).

    A ``gs://`` model served from the cache because GCS could not be reached says so here.
    Without ``version``: the note of the last fetch. With it: the note for that version as
    the store stands now, "" again once a listing reaches GCS (refresh statuses with it).
    """
    if version is not None:
        return store.notice_for(version)
    return getattr(store, "notice", "") or ""


def list_pool_models(uri: str, settings: StoreSpec | None = None) -> list[str]:
    """The models of a pool: the subdirectories of ``uri`` named like models, sorted.

    Other names (``.staging``, ``Upper``, names with spaces) are skipped, so a directory name
    never becomes a model, and so a path, unchecked.
    """
    names = open_store(uri, settings).subdirectories()
    return sorted(
        name for name in names if MODEL_NAME.fullmatch(name) and len(name) <= MAX_MODEL_NAME_CHARS
    )
