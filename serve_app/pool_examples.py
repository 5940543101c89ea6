"""Generate a model pool offline: many tiny Keras models, each recognisable by its answer.

Model ``<prefix><i>`` (version 1, ``model.keras``) takes ``x``, float32 ``(batch, 4)``, and
returns ``y``, float32 ``(batch, 1)`` = ``sum(x) + i``: an answer tells which model gave it.
Tests and ``bench/pool_bench.py`` use it. Usage:
``python -m serve_app.pool_examples --out model_pool --count 50``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

PREFIX = "tenant-"


def model_name(index: int, prefix: str = PREFIX) -> str:
    return f"{prefix}{index}"


def expected_output(index: int, x: list[float]) -> float:
    """What model ``index`` answers for one row ``x``."""
    return float(sum(x)) + index


def build_pool(root: Path, count: int, prefix: str = PREFIX, start: int = 0) -> list[str]:
    """Write models ``start .. start+count-1`` under ``root`` (kept if present); their names."""
    import keras
    import numpy as np

    names = []
    for index in range(start, start + count):
        name = model_name(index, prefix)
        target = Path(root) / name / "1" / "model.keras"
        names.append(name)
        if target.is_file():
            continue
        inputs = keras.Input(shape=(4,), name="x", dtype="float32")
        outputs = keras.layers.Dense(1, name="y")(inputs)
        model = keras.Model(inputs=inputs, outputs=outputs, name=name.replace("-", "_"))
        model.get_layer("y").set_weights(
            [np.ones((4, 1), dtype=np.float32), np.array([index], dtype=np.float32)]
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        # Saved beside, then renamed: a pool replica never sees a half-written file.
        partial = target.with_name(".model.keras.partial.keras")
        model.save(partial)
        partial.rename(target)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app.pool_examples")
    parser.add_argument("--out", type=Path, default=Path("model_pool"))
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--prefix", default=PREFIX)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    names = build_pool(args.out, args.count, args.prefix)
    print(f"{len(names)} models in {args.out}: {names[0]} .. {names[-1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
