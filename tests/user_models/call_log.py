"""A model that writes down every model call it makes, and whose rows can break a call.

The row's first number says what happens: ``HOLD`` waits until the file ``release`` exists
(so a test can keep the model busy while requests queue), ``BREAKS_THE_MODEL`` makes
``predict`` raise (its model call fails), ``BREAKS_THE_CALL`` answers an object that cannot
be pickled (the handle call that carries its answer fails as a whole).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HOLD = -7.0
BREAKS_THE_MODEL = 666.0
BREAKS_THE_CALL = 555.0


class CallLog:
    """``y = 2 x``; each model call appends one line to ``options["log"]``: its rows' first
    numbers, comma-separated."""

    inputs = {"x": ("float32", [-1, 4])}
    outputs = {"y": ("float32", [-1, 4]), "note": ("string", [-1])}

    def __init__(self, path: str, options: dict[str, Any]) -> None:
        self.log = Path(options["log"])
        self.release = Path(options["release"])

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        firsts = [float(v) for v in x[:, 0]]
        with self.log.open("a") as log:
            log.write(",".join(f"{v:g}" for v in firsts) + "\n")
        if HOLD in firsts:
            deadline = time.monotonic() + 60
            while not self.release.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        if BREAKS_THE_MODEL in firsts:
            raise RuntimeError("the model cannot score 666")
        notes = np.empty(len(x), dtype=object)
        for i, first in enumerate(firsts):
            notes[i] = threading.Lock() if first == BREAKS_THE_CALL else "ok"
        return {"y": x * 2, "note": notes}
