"""The app's own logic, shared as is by the Flask app and the Python model: what a request
means (an 8x8 image of a digit, pixel values 0-16) and what the answer says."""

from __future__ import annotations

from typing import Any

import numpy as np

SIDE = 8
MAX_PIXEL = 16.0


def pixels_of(body: Any) -> np.ndarray:
    """The model's input for one request body ``{"image": [[...8 values...] x 8]}``: the
    image flattened row by row and scaled to [0, 1]. ValueError says what was wrong."""
    if not isinstance(body, dict) or "image" not in body:
        raise ValueError('expected {"image": [[8 numbers] x 8 rows]}')
    try:
        image = np.asarray(body["image"], dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError("image must be 8 rows of 8 numbers") from None
    if image.shape != (SIDE, SIDE):
        raise ValueError(f"image must be 8 rows of 8 numbers, got shape {list(image.shape)}")
    if not np.isfinite(image).all() or image.min() < 0 or image.max() > MAX_PIXEL:
        raise ValueError("pixel values must lie between 0 and 16")
    return image.reshape(SIDE * SIDE) / MAX_PIXEL


def answer_of(probabilities: np.ndarray) -> dict[str, Any]:
    """The JSON answer for one image: the digit and how sure the model is."""
    digit = int(np.argmax(probabilities))
    return {"digit": digit, "confidence": round(float(probabilities[digit]), 4)}
