"""Write the Flask app's model as the app has it, ``my_model.h5`` (Keras's legacy HDF5):

    python -m examples.flask_digits.build --out model_repository

gives ``model_repository/digits-flask/1/my_model.h5``: the default fleet's ``digits``
classifier (version 2), saved in the format seed apps load with ``load_model("my_model.h5")``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from examples.flask_digits.model import MODEL_FILE

NAME = "digits-flask"


def build(root: Path) -> Path:
    """Train the digits classifier and save it as ``root/digits-flask/1/my_model.h5``."""
    import keras

    from serve_app.examples import build_digits

    target = Path(root) / NAME / "1" / MODEL_FILE
    if target.is_file():
        return target.parent.parent
    with tempfile.TemporaryDirectory() as scratch:
        trained = build_digits(Path(scratch), versions=(2,)) / "2" / "model.keras"
        model = keras.models.load_model(trained)
        target.parent.mkdir(parents=True, exist_ok=True)
        model.save(target)
    return target.parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("model_repository"))
    print(f"built {build(parser.parse_args(argv).out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
