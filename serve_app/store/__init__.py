"""Model stores by URI scheme."""

from __future__ import annotations

from serve_app.errors import ModelLoadError
from serve_app.store.base import ModelStore, select_versions
from serve_app.store.local import LocalStore

__all__ = ["LocalStore", "ModelStore", "open_store", "select_versions"]


def open_store(uri: str) -> ModelStore:
    """The store for ``uri``: a local path or ``file://`` URI (``gs://`` comes with the cache)."""
    scheme, sep, _ = uri.partition("://")
    if not sep or scheme == "file":
        return LocalStore(uri)
    raise ModelLoadError(
        f"unsupported model uri scheme '{scheme}://' in {uri} (supported: local paths, file://)"
    )
