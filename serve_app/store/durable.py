"""Making files and renames survive a power loss: ``fsync`` of files and of directories.

A rename is atomic, but not durable, and not ordered with the data of the files renamed:
after a power loss the new name may be on disk while the files' bytes are not, leaving
files of the right size full of zeros. So every file and directory of a version is
fsynced *before* it is renamed into place, and the directory that receives it *after*.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush one file's (or directory's) data and metadata to disk."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file under ``root``, then every directory, deepest first, ``root`` last.

    Directories are flushed so that the entries naming the files are on disk too.
    """
    directories = []
    for current, _, files in os.walk(root):
        for name in files:
            fsync_path(Path(current) / name)
        directories.append(Path(current))
    for directory in reversed(directories):  # os.walk is top-down: reversed is deepest first
        fsync_path(directory)


def fsync_up_to(path: Path, stop: Path) -> None:
    """Flush ``path`` and each directory above it, up to and including ``stop``.

    A rename into ``path`` is durable once ``path`` is flushed; flushing its parents makes
    their entries durable too, for directories that were made just before (without this, a
    version renamed into a fresh directory could vanish with it after a power loss).
    """
    fsync_path(path)
    while path != stop and path != path.parent:
        path = path.parent
        fsync_path(path)


def create_durably(path: Path, data: bytes = b"") -> None:
    """Write ``path`` whole and flush it and its directory entry (a marker, a small record)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)
