"""Test-wide environment: offline hubs, quiet TensorFlow, no Ray usage reporting."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# The shared integration fleet (session-scoped fixture `fleet`).
pytest_plugins = ["tests.integration.fleet"]
