"""A minimal, byte-for-byte reproducible wheel: metadata and, optionally, a few files.

Used for the metadata-only ``tensorflow`` shim (``install/wheels/``), for the torch stand-in
that ``install/lock.py`` resolves Linux against, and for the fake packages of the install-plan
test (a local package index). Standard library only: the install plan runs before any venv.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path
from typing import NamedTuple

# Zip entries carry a timestamp; a fixed one makes the same inputs give the same bytes (hash).
EPOCH = (1980, 1, 1, 0, 0, 0)


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def write_wheel(
    directory: Path,
    name: str,
    version: str,
    requires: list[str] = (),
    tag: str = "py3-none-any",
    summary: str = "",
    files: dict[str, bytes] | None = None,
) -> Path:
    """Write ``{name}-{version}-{tag}.whl`` into ``directory``; returns its path."""
    stem = f"{name.replace('-', '_')}-{version}"
    info = f"{stem}.dist-info"
    metadata = "".join(
        [
            "Metadata-Version: 2.1\n",
            f"Name: {name}\n",
            f"Version: {version}\n",
            f"Summary: {summary}\n" if summary else "",
            *(f"Requires-Dist: {r}\n" for r in requires),
        ]
    )
    entries = dict(files or {})
    entries[f"{info}/METADATA"] = metadata.encode()
    entries[f"{info}/WHEEL"] = (
        f"Wheel-Version: 1.0\nGenerator: install/wheelfile.py\nRoot-Is-Purelib: true\nTag: {tag}\n"
    ).encode()
    record = [_record_line(path, data) for path, data in entries.items()]
    entries[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}-{tag}.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for entry, data in entries.items():
            info_ = zipfile.ZipInfo(entry, EPOCH)
            info_.external_attr = 0o644 << 16
            info_.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(info_, data)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Shim(NamedTuple):
    name: str
    version: str


# Satisfies tensorflow-serving-api's `tensorflow` requirement where tensorflow-cpu is installed
# (Linux x86_64): metadata only, requiring tensorflow-cpu; install/README.md says why.
SHIM = Shim("tensorflow-2.21.0+cpushim-py3-none-any.whl", "2.21.0+cpushim")


def write_shim(directory: Path) -> Path:
    """The shim's wheel, byte for byte the one in install/wheels/ (its hash is in the locks)."""
    return write_wheel(
        directory,
        "tensorflow",
        SHIM.version,
        ["tensorflow-cpu==2.21.0"],
        summary="Stands for tensorflow where tensorflow-cpu is installed"
        " (serve-app install/README.md)",
    )
