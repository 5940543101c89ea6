"""A scorer whose every step can be told to fail by the instance a client sends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

RAISE_IN_PREDICT = 666.0  # a row holding it makes ``predict`` raise (for the whole batch)
RAISE_IN_POSTPROCESS = 777.0  # a row holding it makes ``postprocess`` raise


class Scorer:
    """``y = x * scale + bias``; ``scale`` is the version's (``scale.txt``), ``bias`` the
    config's option. TF Serving REST instances are ``{"x": [4 numbers]}`` or the 4 numbers."""

    inputs = {"x": ("float32", [-1, 4])}
    outputs = {"y": ("float32", [-1, 4])}

    def __init__(self, path: str, options: dict[str, Any]) -> None:
        self.scale = float((Path(path) / "scale.txt").read_text())
        self.bias = float(options.get("bias", 0.0))

    def preprocess(self, instance: Any) -> dict[str, Any]:
        values = instance.get("x") if isinstance(instance, dict) else instance
        try:
            row = np.asarray(values, dtype=np.float32)
        except (TypeError, ValueError):
            raise ValueError(f"x must be 4 numbers, got {values!r:.40}") from None
        if row.shape != (4,):
            raise ValueError(f"x must be 4 numbers, got shape {list(row.shape)}")
        return {"x": row}

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        if (x == RAISE_IN_PREDICT).any():
            raise RuntimeError("the scorer cannot score 666")
        return {"y": x * self.scale + self.bias}

    def postprocess(self, row: dict[str, np.ndarray]) -> dict[str, Any]:
        y = row["y"]
        if (y == RAISE_IN_POSTPROCESS * self.scale + self.bias).any():
            raise KeyError("no label for 777")
        return {"y": [float(v) for v in y], "total": float(y.sum())}


class PlainScorer:
    """No hooks: instances are decoded as TF Serving decodes them, outputs answered as is."""

    inputs = {"x": ("float32", [-1, 4])}
    outputs = {"y": ("float32", [-1, 4]), "label": ("string", [-1])}

    def __init__(self, path: str, options: dict[str, Any]) -> None:
        self.scale = float((Path(path) / "scale.txt").read_text())

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        y = inputs["x"] * self.scale
        labels = np.array(["big" if v > 10 else "small" for v in y.sum(axis=1)], dtype=object)
        return {"y": y, "label": labels}


class FailsInInit:
    """A class whose ``__init__`` fails: a load failure (503), other models unaffected."""

    inputs = {"x": ("float32", [-1, 4])}
    outputs = {"y": ("float32", [-1, 4])}

    def __init__(self, path: str, options: dict[str, Any]) -> None:
        raise FileNotFoundError("weights.bin is missing")

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": inputs["x"]}


def write_version(root: Path, version: int, scale: float) -> Path:
    """A version directory of the scorer models: the scale it multiplies by."""
    directory = root / str(version)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "scale.txt").write_text(str(scale))
    return directory
