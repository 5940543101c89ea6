"""A multi-model inference service on Ray Serve."""

__version__ = "0.1.0"
