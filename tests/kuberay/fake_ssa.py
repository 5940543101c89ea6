"""Server-side apply's field ownership, as kube-apiserver keeps it, for the test API server.

Each object carries ``metadata.managedFields``: per field manager and operation (``Apply`` or
``Update``), the set of fields it owns, in the real ``FieldsV1`` form (``{"f:spec":
{"f:replicas": {}}}``). Maps are merged field by field; lists are atomic (one field), which is
what kube-apiserver does for every list of a CRD schema without list-type markers.

- An apply owns exactly the fields it sends. A field it owned and no longer sends is removed,
  unless another manager owns it too.
- Sending a field that another manager owns with a different value is a conflict (409) unless
  ``force``, which moves the field to the applier. The same value is shared ownership.
- An update (PUT, POST, merge patch) takes the fields it changed away from everyone else.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

Path = tuple[str, ...]
MISSING = object()
# Never owned: identity, and what the server alone writes.
UNOWNED = {
    ("apiVersion",),
    ("kind",),
    ("metadata", "name"),
    ("metadata", "namespace"),
    ("metadata", "uid"),
    ("metadata", "resourceVersion"),
    ("metadata", "generation"),
    ("metadata", "creationTimestamp"),
    ("metadata", "managedFields"),
}


class Conflict(Exception):
    """Fields another manager owns would change; ``conflicts`` is ``[(manager, path)]``."""

    def __init__(self, conflicts: list[tuple[str, Path]], api_version: str) -> None:
        self.conflicts = conflicts
        self.api_version = api_version
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """kube-apiserver's wording."""
        lines = [
            f'conflict with "{manager}" using {self.api_version}: .{".".join(path)}'
            for manager, path in self.conflicts
        ]
        count = f"{len(lines)} conflict{'s' if len(lines) > 1 else ''}"
        if len(lines) == 1:
            return f"Apply failed with {count}: {lines[0]}"
        return f"Apply failed with {count}: " + "\n".join(f"- {line}" for line in lines)


def leaves(obj: Any, prefix: Path = ()) -> dict[Path, Any]:
    """Every owned field of ``obj``: scalars, lists and empty maps, by path."""
    if isinstance(obj, dict) and obj:
        found: dict[Path, Any] = {}
        for key, value in obj.items():
            found.update(leaves(value, (*prefix, key)))
        return found
    return {} if prefix in UNOWNED or not prefix else {prefix: obj}


def ownable(obj: dict[str, Any], has_status: bool) -> dict[Path, Any]:
    """The fields of ``obj`` a write through the main resource can own."""
    return {
        p: v
        for p, v in leaves(obj).items()
        if p not in UNOWNED and not (has_status and p[0] == "status")
    }


def apply(
    live: dict[str, Any] | None,
    applied: dict[str, Any],
    manager: str,
    force: bool,
    has_status: bool,
) -> dict[str, Any]:
    """The object after ``manager`` applies ``applied`` to ``live`` (None: absent)."""
    sent = ownable(applied, has_status)
    if live is None:
        result = {
            k: copy.deepcopy(v) for k, v in applied.items() if not has_status or k != "status"
        }
        result["metadata"]["managedFields"] = [_entry(manager, "Apply", applied, set(sent))]
        return result
    entries = copy.deepcopy(live["metadata"].get("managedFields") or [])
    mine = next((e for e in entries if _is(e, manager, "Apply")), None)
    owned_before = _paths(mine) if mine else set()
    others = [e for e in entries if e is not mine and not e.get("subresource")]
    conflicts = [
        (entry["manager"], path)
        for path, value in sent.items()
        for entry in others
        if _owns(_paths(entry), path) and _value(live, path) != value
    ]
    if conflicts and not force:
        raise Conflict(conflicts, applied.get("apiVersion", ""))
    for manager_name, path in conflicts:  # force: the applier takes them over
        for entry in others:
            if entry["manager"] == manager_name:
                _set_paths(entry, {p for p in _paths(entry) if not _prefix_of(p, path)})
    result = copy.deepcopy(live)
    still_owned = set().union(*(_paths(e) for e in others)) if others else set()
    for path in owned_before - set(sent):
        if path not in still_owned:
            _delete(result, path)
    for path, value in sent.items():
        _put(result, path, copy.deepcopy(value))
    # A no-op apply keeps its entry as it was, so the object does not change at all.
    unchanged = mine is not None and _paths(mine) == set(sent) and result == live
    new_entry = mine if unchanged else _entry(manager, "Apply", applied, set(sent))
    kept = []
    for entry in entries:
        if entry is mine:
            kept += [new_entry] if sent else []
        elif _paths(entry) or entry.get("subresource"):
            kept.append(entry)
    if sent and mine is None:
        kept.append(new_entry)
    result["metadata"]["managedFields"] = kept
    return result


def update(
    live: dict[str, Any] | None,
    new: dict[str, Any],
    manager: str,
    has_status: bool,
    subresource: str = "",
) -> dict[str, Any]:
    """Record that ``manager`` wrote ``new`` over ``live`` (create, PUT or merge patch)."""
    before = {} if live is None else ownable(live, has_status=False)
    after = ownable(new, has_status=False)
    changed = {p for p, v in after.items() if before.get(p, MISSING) != v}
    if subresource == "status":
        changed = {p for p in changed if p[0] == "status"}
    elif has_status:
        changed = {p for p in changed if p[0] != "status"}
    entries = copy.deepcopy((live or {}).get("metadata", {}).get("managedFields") or [])
    for entry in entries:
        if entry.get("subresource", "") == subresource:
            _set_paths(entry, {p for p in _paths(entry) if not any(_owns({c}, p) for c in changed)})
    entries = [e for e in entries if _paths(e)]
    mine = next(
        (
            e
            for e in entries
            if _is(e, manager, "Update") and e.get("subresource", "") == subresource
        ),
        None,
    )
    if changed:
        owned = (_paths(mine) if mine else set()) | changed
        if mine:
            entries.remove(mine)
        entry = _entry(manager, "Update", new, owned)
        if subresource:
            entry["subresource"] = subresource
        entries.append(entry)
    result = copy.deepcopy(new)
    result.setdefault("metadata", {})["managedFields"] = entries
    return result


def _entry(manager: str, operation: str, obj: dict[str, Any], paths: set[Path]) -> dict[str, Any]:
    return {
        "manager": manager,
        "operation": operation,
        "apiVersion": obj.get("apiVersion", ""),
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "fieldsType": "FieldsV1",
        "fieldsV1": _fields_v1(paths),
    }


def _is(entry: dict[str, Any], manager: str, operation: str) -> bool:
    return entry.get("manager") == manager and entry.get("operation") == operation


def _fields_v1(paths: set[Path]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path in sorted(paths):
        node = tree
        for key in path:
            node = node.setdefault(f"f:{key}", {})
    return tree


def _paths(entry: dict[str, Any] | None, node: Any = None, prefix: Path = ()) -> set[Path]:
    """The leaf paths of an entry's ``fieldsV1``."""
    if node is None:
        node = (entry or {}).get("fieldsV1") or {}
        if not node:
            return set()
    if not node:
        return {prefix}
    found: set[Path] = set()
    for key, child in node.items():
        found |= _paths(entry, child, (*prefix, key.removeprefix("f:")))
    return found


def _set_paths(entry: dict[str, Any], paths: set[Path]) -> None:
    entry["fieldsV1"] = _fields_v1(paths)


def _prefix_of(a: Path, b: Path) -> bool:
    """One path contains the other (a field and a field inside it)."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def _owns(owned: set[Path], path: Path) -> bool:
    return any(_prefix_of(p, path) for p in owned)


def _value(obj: Any, path: Path) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return MISSING
        obj = obj[key]
    return obj


def _put(obj: dict[str, Any], path: Path, value: Any) -> None:
    for key in path[:-1]:
        if not isinstance(obj.get(key), dict):
            obj[key] = {}
        obj = obj[key]
    obj[path[-1]] = value


def _delete(obj: dict[str, Any], path: Path) -> None:
    """Remove a field, and the maps it leaves empty (but not ``metadata`` itself)."""
    root, parents = obj, []
    for key in path[:-1]:
        if not isinstance(obj.get(key), dict):
            return
        parents.append((obj, key))
        obj = obj[key]
    obj.pop(path[-1], None)
    for parent, key in reversed(parents):
        if parent[key] or (parent is root and key == "metadata"):
            break
        del parent[key]
