"""Pure protocol codecs: JSON bodies <-> numpy tensors. No Ray, no FastAPI here."""
