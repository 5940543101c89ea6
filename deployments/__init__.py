"""Model deployments: one module per framework, all behind ``deployments.base.ModelDeployment``."""
