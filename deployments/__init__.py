"""Model replicas: one framework per module (``deployments/registry.py``), all served by the
one deployment class ``deployments.replica.ModelReplica``."""
