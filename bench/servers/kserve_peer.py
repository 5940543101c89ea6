"""KServe's Python model server: V2 REST, no batching (KServe batches only in its sidecar)."""

from __future__ import annotations

from pathlib import Path

from bench.servers.base import VENVS, Endpoint, Server, v2_body, v2_extract


class KServe(Server):
    """``kserve.ModelServer`` with one custom ``kserve.Model``."""

    name = "kserve"
    port = 8103
    venv = VENVS / "kserve"
    packages = ("kserve", "fastapi", "uvicorn", "tensorflow-cpu", "torch", "transformers")
    configured_as = (
        "kserve.ModelServer(workers=1, enable_grpc=False): one uvicorn process; a sync"
        " predict runs on its event loop"
    )
    batching = (
        "none: KServe's batcher is the InferenceService sidecar agent (Kubernetes only),"
        " the Python ModelServer has no in-process batcher"
    )

    def argv(self, model: str, workdir: Path) -> list[str]:
        """``python -m bench.servers.apps.kserve_app``."""
        return [str(self.python()), "-m", "bench.servers.apps.kserve_app"]

    def endpoints(self, model: str) -> list[Endpoint]:
        """V2 JSON ``/v2/models/<model>/infer``."""
        path = f"/v2/models/{model}/infer"
        return [Endpoint(self.name, "v2", path, v2_body(model), v2_extract(model))]
