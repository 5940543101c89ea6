"""Route groups of the ingress, one per protocol, combined in ``serve_app.ingress.Ingress``."""
