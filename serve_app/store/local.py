"""Model repositories on a local (or mounted, e.g. GCS FUSE) filesystem."""

from __future__ import annotations

import re
from pathlib import Path

from serve_app.errors import ModelLoadError
from serve_app.store.base import ModelStore

_VERSION_DIR = re.compile(r"^[0-9]{1,18}$")


class LocalStore(ModelStore):
    """A directory ``<root>/<version>/`` per version, or an unversioned model at ``<root>``."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self.root = Path(uri.removeprefix("file://")).expanduser()

    def _version_dirs(self) -> dict[int, Path]:
        if not self.root.is_dir():
            raise ModelLoadError(f"model repository {self.uri} not found (not a directory)")
        # Directory names like TF Serving's "00000123" map to version 123.
        return {
            int(child.name): child
            for child in self.root.iterdir()
            if child.is_dir() and _VERSION_DIR.match(child.name)
        }

    def list_versions(self) -> list[int]:
        dirs = self._version_dirs()
        return sorted(dirs) if dirs else [1]

    def fetch(self, version: int) -> Path:
        dirs = self._version_dirs()
        if not dirs and version == 1:
            return self.root
        if version not in dirs:
            raise ModelLoadError(f"version {version} not found in {self.uri}")
        return dirs[version]

    def subdirectories(self) -> list[str]:
        """The names of the directories directly under the root (a pool's models)."""
        if not self.root.is_dir():
            raise ModelLoadError(f"model pool {self.uri} not found (not a directory)")
        return [child.name for child in self.root.iterdir() if child.is_dir()]
