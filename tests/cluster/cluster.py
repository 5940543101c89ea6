"""A real multi-node Ray cluster on one machine, started with `ray start`, for tests.

Each node is a `ray start --block` process in its own session: a head and workers that join
it, with explicit free ports, one short ``--temp-dir`` of their own (Ray writes the address
file ``ray_current_cluster`` there, so no `ray.init()` or `serve run` elsewhere on the
machine can find this cluster), and token authentication with a token of their own. Tests
talk to it only as a user would: the `serve` and `ray` command lines through the dashboard
address, and HTTP. `stop` ends exactly the processes started here, never `ray stop` (which
would kill every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import free_port, wait_for

BIN = Path(sys.executable).parent
NODE_START_TIMEOUT_S = 120
# Nodes on one machine share its memory; each object store is kept small (Ray's minimum is 75).
OBJECT_STORE_BYTES = 100 * 2**20


@dataclass
class Node:
    name: str
    process: subprocess.Popen
    log: Path


@dataclass
class LocalCluster:
    """A head and workers on this machine; ``cwd`` is every node's working directory."""

    cwd: Path
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Short: Ray's unix socket paths live under it and must stay below 108 bytes.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))
        self.gcs_port = free_port()
        self.dashboard_port = free_port()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self) -> dict[str, str]:
        """The environment of the nodes and of the CLI calls: token auth with our token."""
        env = {
            key: value
            for key, value in os.environ.items()
            # Ray sets CUDA_VISIBLE_DEVICES per worker; an address would point elsewhere.
            if key not in ("RAY_ADDRESS", "CUDA_VISIBLE_DEVICES", "RAY_AUTH_TOKEN_PATH")
        }
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            RAY_USAGE_STATS_ENABLED="0",
            # SIGTERM stops a node at once instead of draining its replicas for 30 s.
            RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            TF_CPP_MIN_LOG_LEVEL="2",
        )
        return env

    # --- nodes ---------------------------------------------------------------------------

    def start_head(self, num_cpus: float = 0) -> None:
        self._start(
            "head",
            [
                "--head",
                f"--port={self.gcs_port}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={free_port()}",
                f"--num-cpus={num_cpus:g}",
            ],
        )

    def add_worker(
        self,
        name: str,
        num_cpus: int,
        num_gpus: int = 0,
        resources: dict[str, float] | None = None,
        labels: dict[str, str] | None = None,
    ) -> None:
        args = [f"--address={self.address}", f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}"]
        if resources:
            args.append(f"--resources={json.dumps(resources)}")
        if labels:
            args.append("--labels=" + ",".join(f"{k}={v}" for k, v in labels.items()))
        self._start(name, args)

    def _start(self, name: str, args: list[str]) -> None:
        log = self.temp_dir / f"{name}.log"
        command = [
            str(BIN / "ray"),
            "start",
            "--block",
            f"--temp-dir={self.temp_dir}",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            "--disable-usage-stats",
            # Defaults that would clash between nodes on one machine (or with other clusters).
            f"--dashboard-agent-listen-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            *args,
        ]
        with log.open("w") as out:
            process = subprocess.Popen(
                command,
                cwd=self.cwd,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.nodes.append(Node(name, process, log))

        # One node at a time: nodes that start together on one machine race for socket names.
        def started() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"`ray start` of node '{name}' exited:\n{log.read_text()}")
            return "Ray runtime started" in log.read_text()

        wait_for(started, NODE_START_TIMEOUT_S, f"node '{name}' to start", every_s=0.2)

    def list_nodes(self) -> list[dict[str, Any]]:
        """The cluster's nodes from the state API (`ray list nodes`)."""
        result = self.run(
            BIN / "ray", "list", "nodes", "--format=json", f"--address={self.dashboard_url}"
        )
        return json.loads(result.stdout)

    def alive_actor_pids(self, class_name: str) -> set[int]:
        """The pids of the live actors of one class (`ray list actors`), e.g. a replica's."""
        result = self.run(
            BIN / "ray",
            "list",
            "actors",
            "--format=json",
            "--limit=10000",
            "--filter=state=ALIVE",
            f"--filter=class_name={class_name}",
            f"--address={self.dashboard_url}",
        )
        return {actor["pid"] for actor in json.loads(result.stdout)}

    def wait_for_nodes(self, count: int) -> list[dict[str, Any]]:
        def alive() -> list[dict[str, Any]] | None:
            nodes = [n for n in self.list_nodes() if n["state"] == "ALIVE"]
            return nodes if len(nodes) == count else None

        return wait_for(alive, NODE_START_TIMEOUT_S, f"{count} nodes to be ALIVE")

    # --- the command lines ---------------------------------------------------------------

    def run(self, *command: Any, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(part) for part in command],
            cwd=self.cwd,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=180,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(map(str, command))} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def serve_deploy(self, config_file: Path) -> subprocess.CompletedProcess:
        return self.run(BIN / "serve", "deploy", config_file, f"--address={self.dashboard_url}")

    def serve_status(self) -> dict[str, Any]:
        result = self.run(BIN / "serve", "status", f"--address={self.dashboard_url}")
        return yaml.safe_load(result.stdout)

    # --- teardown ------------------------------------------------------------------------

    def stop(self, grace_s: float = 30) -> list[int]:
        """End the processes started here: workers first, then the head; nothing else.

        Returns the processes that had to be killed because they outlived ``grace_s``.
        """
        self._ours = {
            pid: start
            for pid in _descendants([n.process.pid for n in self.nodes])
            if (start := _start_time(pid)) is not None
        }
        for node in reversed(self.nodes):
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
            try:
                node.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()
        deadline = time.monotonic() + grace_s
        while self.leftover_processes() and time.monotonic() < deadline:
            time.sleep(0.5)
        killed = self.leftover_processes()
        for pid in killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return killed

    def leftover_processes(self) -> list[int]:
        """The cluster's processes (as found when ``stop`` began) that are still running.

        A process is recognised by pid and start time, so a pid reused by someone else's
        process is never taken for ours.
        """
        ours = getattr(self, "_ours", {})
        return [pid for pid, start in ours.items() if _start_time(pid) == start]


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    return children


def _descendants(roots: list[int]) -> list[int]:
    """``roots`` and every process below them, from /proc (Linux)."""
    children, found, todo = _children(), [], list(roots)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie is gone, only its exit status is left
        return None
    return int(fields[19])
