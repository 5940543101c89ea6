"""What an apply would change, as a unified diff of YAML, like ``kubectl diff``.

The two sides are the object as it is live and as the server's dry-run apply returned it, both
without what only the server sets (status, managedFields, resource versions), so the diff shows
exactly the fields the apply would change, defaults the server adds included.
"""

from __future__ import annotations

import difflib
from typing import Any

import yaml

from serve_app.kuberay.cluster import Applied, comparable


def object_diff(applied: Applied) -> str:
    """The unified diff from the live object to the applied one; empty when unchanged."""
    where = "/".join(filter(None, [applied.kind.lower(), applied.namespace, applied.name]))
    before = _yaml(comparable(applied.live)) if applied.live is not None else []
    after = _yaml(comparable(applied.result))
    lines = difflib.unified_diff(
        before,
        after,
        fromfile=f"live/{where}" if applied.live is not None else "/dev/null",
        tofile=f"applied/{where}",
        n=3,
    )
    return "".join(lines)


def _yaml(obj: dict[str, Any]) -> list[str]:
    text = yaml.dump(obj, Dumper=_BlockDumper, sort_keys=True, width=100)
    return text.splitlines(keepends=True)


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (serveConfigV2) as ``|`` blocks, so they diff line by line."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)
