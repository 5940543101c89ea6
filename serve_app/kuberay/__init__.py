"""Deploying the fleet to Kubernetes with KubeRay.

``render`` turns ``serve_config.yaml`` into the ``serveConfigV2`` of the RayService manifests in
``kuberay/``; ``kustomize`` builds an overlay; ``cluster`` applies and reads the RayService through
the ``kubernetes`` client; ``status`` judges a RayService's status. The CLI (``serve-app kuberay``)
ties them together.
"""
