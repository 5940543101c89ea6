"""A three-node Ray cluster for the module that uses it: head, CPU worker, GPU worker.

The GPU worker advertises two GPUs (`ray start --num-gpus 2`) and an L4 accelerator
(`accelerator_type:L4`, the resource Ray gives a node with an L4) on a machine without
GPUs: Ray schedules on declared resources and sets CUDA_VISIBLE_DEVICES for them, which is
what the placement tests observe. The workers carry the node label `node-pool` (cpu / gpu),
as a KubeRay worker group's `labels` would. The cluster lives in its own processes, ports,
temp directory and auth token, and is torn down when its module ends.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.cluster import LocalCluster

ROOT = Path(__file__).resolve().parents[2]
CPU_POOL = {"node-pool": "cpu"}
GPU_POOL = {"node-pool": "gpu"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The running cluster; every node's working directory holds ./model_repository."""
    workdir = tmp_path_factory.mktemp("cluster")
    # Built while the nodes start; in a process of its own, so TF stays out of pytest.
    command = [sys.executable, "-m", "serve_app.examples", "--out", "model_repository"]
    build = subprocess.Popen(
        [*command, "--models", "digits,tiny-gpt2"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    cluster = LocalCluster(cwd=workdir)
    try:
        cluster.start_head(num_cpus=0)
        cluster.add_worker("cpu", num_cpus=2, labels=CPU_POOL)
        cluster.add_worker(
            "gpu", num_cpus=2, num_gpus=2, resources={"accelerator_type:L4": 1}, labels=GPU_POOL
        )
        cluster.wait_for_nodes(3)
        output, _ = build.communicate(timeout=600)
        assert build.returncode == 0, output
        yield cluster
    finally:
        if build.poll() is None:
            build.kill()
            build.wait()
        killed = cluster.stop()
        assert not cluster.leftover_processes(), "processes of the test cluster outlived it"
        # Killing is allowed (workers the raylet did not reap in time), leaving them is not.
        print(f"test cluster stopped; {len(killed)} straggler process(es) killed")
