"""Fixtures for the kuberay/ tests: rendered overlays, and a real HTTP Kubernetes API server."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.kuberay import kustomize
from tests.kuberay.fake_apiserver import TOKEN, FakeApiServer, serving

ROOT = Path(__file__).resolve().parents[2]
KUBERAY_DIR = ROOT / "kuberay"
OVERLAYS = sorted(p.name for p in (KUBERAY_DIR / "overlays").iterdir() if p.is_dir())


@pytest.fixture(scope="session")
def built() -> dict[str, list[dict[str, Any]]]:
    """Every overlay (and the base) as the real kustomize renders it."""
    dirs = {"base": KUBERAY_DIR / "base"} | {o: KUBERAY_DIR / "overlays" / o for o in OVERLAYS}
    return {name: kustomize.build(path) for name, path in dirs.items()}


def the_rayservice(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The one RayService among ``objects``."""
    (rayservice,) = [o for o in objects if o["kind"] == "RayService"]
    return rayservice


@dataclass
class Cluster:
    """A running fake API server and a kubeconfig that points the real client at it."""

    state: FakeApiServer
    url: str
    kubeconfig: Path


def write_kubeconfig(path: Path, url: str, token: str = TOKEN) -> Path:
    """A kubeconfig as ``gcloud container clusters get-credentials`` writes one, minus TLS."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "test", "cluster": {"server": url}}],
                "users": [{"name": "tester", "user": {"token": token}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "tester"}}],
                "current-context": "test",
            }
        )
    )
    return path


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A Kubernetes API server with KubeRay's CRD installed (and no operator)."""
    state = FakeApiServer()
    with serving(state) as url:
        yield Cluster(state, url, write_kubeconfig(tmp_path / "kubeconfig", url))


@pytest.fixture
def cluster_without_kuberay(tmp_path: Path) -> Iterator[Cluster]:
    """A Kubernetes API server without the ray.io API group."""
    state = FakeApiServer(crd_installed=False)
    with serving(state) as url:
        yield Cluster(state, url, write_kubeconfig(tmp_path / "kubeconfig", url))
