"""Deploying the fleet to Kubernetes with KubeRay.

``render`` turns ``serve_config.yaml`` into the ``serveConfigV2`` of the RayService manifests in
``kuberay/``; ``kustomize`` builds an overlay; ``cluster`` server-side applies its objects and
reads the RayService through the ``kubernetes`` client; ``diff`` shows what an apply would
change; ``status`` judges a RayService's status and its pods. The CLI (``serve-app kuberay``)
ties them together.
"""
