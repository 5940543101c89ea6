"""Where a Serve config holds this project's models, pools and ingress settings, in either layout.

The fleet is written as one application per model (``serve_app.app:build_model``) and per pool
(``build_pool``) beside an ingress application (``build_ingress``), or, in the older layout, as
one ``build_app`` application whose args hold ``models``, ``pools`` and ``ingress``. Both may
appear in one file. ``locate`` finds, in both, the mappings the render changes, so that it can
change them in place: every application keeps its shape, and a model's override reaches that
model's own application only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from serve_app.builders import FLEET_BUILDER, INGRESS_BUILDER, MODEL_BUILDER, OURS


@dataclass(frozen=True)
class Entry:
    """One model or pool: its settings, as a mapping that lives inside the Serve config."""

    kind: Literal["model", "pool"]
    name: str
    settings: dict[str, Any]  # its application's args, or its item of args.models / args.pools


@dataclass(frozen=True)
class IngressSlot:
    """Where one ingress's settings are: ``holder[key]`` (an application and ``args``, or a
    ``build_app`` application's args and ``ingress``)."""

    holder: dict[str, Any]
    key: str

    def get(self) -> dict[str, Any]:
        """The ingress settings (empty when unset)."""
        value = self.holder.get(self.key)
        return value if isinstance(value, dict) else {}

    def set(self, value: dict[str, Any]) -> None:
        """Replace the ingress settings."""
        self.holder[self.key] = value


@dataclass
class FleetLayout:
    """This project's applications in one Serve config, by what they hold."""

    entries: list[Entry] = field(default_factory=list)
    ingresses: list[IngressSlot] = field(default_factory=list)

    def named(self, name: str) -> Iterator[Entry]:
        """The entries called ``name`` (one, unless the file repeats a name: the validation
        after the render names that)."""
        return (e for e in self.entries if e.name == name)

    @property
    def names(self) -> list[str]:
        """Every model and pool name, in file order."""
        return [e.name for e in self.entries]


def locate(config: dict[str, Any]) -> FleetLayout:
    """The models, pools and ingresses of ``config``'s applications that this project builds.

    Shapes that are not mappings are skipped here: the validation that follows names them."""
    layout = FleetLayout()
    for app in config.get("applications") or []:
        if not isinstance(app, dict) or app.get("import_path") not in OURS:
            continue
        builder = app["import_path"]
        if builder == INGRESS_BUILDER:
            layout.ingresses.append(IngressSlot(app, "args"))
            continue
        args = app.get("args")
        if not isinstance(args, dict):
            continue
        if builder == FLEET_BUILDER:
            for key, kind in (("models", "model"), ("pools", "pool")):
                for item in args.get(key) or []:
                    if isinstance(item, dict):
                        layout.entries.append(Entry(kind, str(item.get("name")), item))
            layout.ingresses.append(IngressSlot(args, "ingress"))
        else:
            kind = "model" if builder == MODEL_BUILDER else "pool"
            layout.entries.append(Entry(kind, str(args.get("name", app.get("name"))), args))
    return layout
