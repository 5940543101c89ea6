"""The gRPC transport: TF Serving's and the Open Inference Protocol's services over the data
plane (``services.py``: what Serve registers; ``servicers.py``: the calls; ``status.py``: the
status codes)."""
