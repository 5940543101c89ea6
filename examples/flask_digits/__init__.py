"""A Flask app in the seeds' style, and the same logic as a Python model (``model.py``)."""
