"""A server's processes: start in its own session, track the whole tree, count CPU, stop.

What is counted as the server: the process the orchestrator started, every process that
descends from it (uvicorn/gunicorn workers, MLServer's inference worker, LitServe's
inference worker, ``tritonserver`` and its Python backend stub, and for Ray: the GCS,
raylet, dashboard and its agents, log monitor and every worker, since ``serve run`` starts
the local Ray node as its children), and every process in the session the server was
started in (``start_new_session``), in case one is reparented. The tree is sampled every
``SAMPLE_S`` seconds, so a process is remembered even after its parent exits: at stop time
everything ever seen is made to exit, and only those processes, by pid (checked against
their start time so a reused pid is never signalled).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

SAMPLE_S = 1.0
ProcKey = tuple[int, float]  # (pid, create_time): unique even when a pid is reused


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU seconds of one process (its own threads, not reaped children)."""
    times = proc.cpu_times()
    return times.user + times.system


@dataclass
class ServerProcess:
    """A started server: its leader process, every process seen in its tree, its log."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    seen: dict[ProcKey, psutil.Process] = field(default_factory=dict)
    labels: dict[ProcKey, str] = field(default_factory=dict)  # short command line, by process
    _stop_sampling: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def start(
        cls, name: str, argv: list[str], env: dict[str, str], cwd: Path, log_path: Path
    ) -> ServerProcess:
        """Start ``argv`` in a new session, output to ``log_path``, and begin sampling its tree."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = cls(name=name, popen=popen, log_path=log_path)
        server.sample()
        threading.Thread(target=server._sample_loop, daemon=True).start()
        return server

    # --- the tree ------------------------------------------------------------------------

    def _current(self) -> list[psutil.Process]:
        """The leader, its descendants and the other processes of its session, alive now."""
        procs: list[psutil.Process] = []
        try:
            leader = psutil.Process(self.popen.pid)
            procs.append(leader)
            procs.extend(leader.children(recursive=True))
        except psutil.Error:
            pass
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getsid(proc.pid) == self.popen.pid:
                    procs.append(proc)
        # A descendant is usually in the session too: list each process once.
        return list({proc.pid: proc for proc in procs}.values())

    def sample(self) -> list[psutil.Process]:
        """Record the tree's processes now; return those alive."""
        alive = []
        for proc in self._current():
            with contextlib.suppress(psutil.Error):
                key = (proc.pid, proc.create_time())
                with self._lock:
                    if key not in self.seen:
                        self.seen[key] = proc
                        self.labels[key] = _label(proc)
                alive.append(self.seen[key])
        return alive

    def _sample_loop(self) -> None:
        while not self._stop_sampling.wait(SAMPLE_S):
            self.sample()

    def cpu_snapshot(self) -> dict[ProcKey, float]:
        """CPU seconds of every process of the tree alive now, by process."""
        snapshot = {}
        for proc in self.sample():
            with contextlib.suppress(psutil.Error):
                snapshot[(proc.pid, proc.create_time())] = cpu_seconds(proc)
        return snapshot

    def describe(self) -> list[dict[str, object]]:
        """The tree's processes now: pid, name and the start of the command line."""
        rows = []
        for proc in self.sample():
            with contextlib.suppress(psutil.Error):
                rows.append(
                    {"pid": proc.pid, "name": proc.name(), "cmd": " ".join(proc.cmdline())[:160]}
                )
        return rows

    def alive(self) -> bool:
        """Whether the leader process still runs."""
        return self.popen.poll() is None

    # --- stopping ------------------------------------------------------------------------

    def remaining(self) -> list[psutil.Process]:
        """Every process ever seen in the tree that still runs (same pid and start time)."""
        self.sample()
        with self._lock:
            items = list(self.seen.items())
        left = []
        for (_, created), proc in items:
            with contextlib.suppress(psutil.Error):
                same = proc.is_running() and proc.create_time() == created
                if same and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(proc)
        return left

    def stop(self, grace_s: float = 30.0, group: bool = False) -> dict[str, object]:
        """SIGINT the leader (or with ``group``, its whole process group, as Ctrl+C does), wait;
        then SIGTERM, then SIGKILL whatever is left of the tree, process by process.

        Returns how it went: which signals were needed and any process that survived.
        """
        self.sample()
        steps: list[str] = []
        if self.alive():
            steps.append("SIGINT")
            with contextlib.suppress(ProcessLookupError):
                if group:  # the group the leader leads (start_new_session): only ours
                    os.killpg(self.popen.pid, signal.SIGINT)
                else:
                    self.popen.send_signal(signal.SIGINT)
        _wait_gone(self.remaining, grace_s)
        self._stop_sampling.set()
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            left = self.remaining()
            if not left:
                break
            steps.append(f"{sig.name} to {len(left)} left: {_names(left)}")
            for proc in left:
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(sig)
            _wait_gone(self.remaining, wait_s)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        survivors = self.remaining()
        return {
            "steps": steps,
            "clean": steps in ([], ["SIGINT"]),
            "survivors": _names(survivors),
            "exit_code": self.popen.returncode,
        }


def _wait_gone(remaining: Callable[[], list[psutil.Process]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and remaining():
        time.sleep(0.25)


def _names(procs: Iterable[psutil.Process]) -> list[str]:
    names = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            names.append(f"{proc.pid}:{proc.name()}")
    return names


def _label(proc: psutil.Process) -> str:
    """A process's command, short: Ray workers show their actor (``ray::ServeReplica:...``)."""
    with contextlib.suppress(psutil.Error):
        cmd = proc.cmdline()
        if cmd:
            head = Path(cmd[0]).name if cmd[0].startswith("/") else cmd[0]
            if head.startswith("python") and len(cmd) > 1:
                head += " " + " ".join(cmd[1:3])
            return head[:80]
        return proc.name()
    return "?"


def cpu_delta(before: dict[ProcKey, float], after: dict[ProcKey, float]) -> float:
    """CPU seconds spent between two snapshots; a process new in ``after`` counts whole."""
    return sum(cpu_by_process(before, after).values())


def cpu_by_process(
    before: dict[ProcKey, float], after: dict[ProcKey, float]
) -> dict[ProcKey, float]:
    """CPU seconds each process spent between two snapshots."""
    return {key: max(0.0, t - before.get(key, 0.0)) for key, t in after.items()}


def top_processes(
    server: ServerProcess, before: dict[ProcKey, float], after: dict[ProcKey, float], n: int = 5
) -> list[tuple[str, float]]:
    """The ``n`` processes of the tree that used the most CPU between two snapshots."""
    spent = sorted(cpu_by_process(before, after).items(), key=lambda kv: -kv[1])[:n]
    out = []
    for key, cpu in spent:
        proc = server.seen.get(key)
        # Read again now: a Ray worker renames itself (ray::ServeReplica:...) after it starts.
        label = _label(proc) if proc is not None and proc.is_running() else "?"
        out.append((label if label != "?" else server.labels.get(key, str(key[0])), round(cpu, 3)))
    return out
