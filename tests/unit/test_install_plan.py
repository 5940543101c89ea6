"""The install plan (install/plan.py) against a package index served here, as the public one is.

PyPI's Linux ``torch==2.13.0`` is the CUDA build: it requires ``nvidia-*`` wheels (2.7 GB).
PyTorch's CPU index has ``torch 2.13.0+cpu``. The fake index below holds both; pip resolves the
plan's torch step against it (``pip install --dry-run --report``) in an environment that reads
no pip configuration, and the report must hold the CPU build and no ``nvidia-*`` package.
A plain ``pip install torch==2.13.0`` against the same index takes the CUDA build: the index
tells the two apart.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from install import plan
from install.wheelfile import SHIM, sha256, write_shim, write_wheel
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "install" / "lock"


def simple_index(root: Path, wheels: list[Path]) -> None:
    """A PEP 503 index at ``root`` with ``wheels`` (already inside ``root/files``)."""
    by_project: dict[str, list[Path]] = {}
    for wheel in wheels:
        by_project.setdefault(wheel.name.split("-")[0].replace("_", "-").lower(), []).append(wheel)
    for project, files in by_project.items():
        links = "".join(f'<a href="../../files/{f.name}">{f.name}</a>\n' for f in files)
        (root / "simple" / project).mkdir(parents=True)
        (root / "simple" / project / "index.html").write_text(f"<html><body>{links}</body></html>")


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Iterator[dict[str, str]]:
    """``pypi``: CUDA torch + its nvidia wheel; ``cpu``: torch+cpu; ``both``: all of them."""
    root = tmp_path_factory.mktemp("index")
    nvidia = write_wheel(root / "pypi" / "files", "nvidia-cublas-cu13", "13.0.0")
    cuda_torch = write_wheel(
        root / "pypi" / "files", "torch", "2.13.0", ["nvidia-cublas-cu13==13.0.0", "filelock"]
    )
    filelock = write_wheel(root / "pypi" / "files", "filelock", "3.20.0")
    simple_index(root / "pypi", [nvidia, cuda_torch, filelock])
    cpu_torch = write_wheel(root / "cpu" / "files", "torch", "2.13.0+cpu", ["filelock"])
    simple_index(root / "cpu", [cpu_torch])
    both = root / "both" / "files"
    both.mkdir(parents=True)
    for wheel in (nvidia, cuda_torch, filelock, cpu_torch):
        (both / wheel.name).write_bytes(wheel.read_bytes())
    simple_index(root / "both", sorted(both.iterdir()))

    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    yield {name: f"{base}/{name}/simple" for name in ("pypi", "cpu", "both")}
    server.shutdown()
    server.server_close()


def pip_env() -> dict[str, str]:
    """No pip configuration of this machine (its find-links holds the real torch+cpu)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def installed(report: Path) -> dict[str, str]:
    data = json.loads(report.read_text())
    return {item["metadata"]["name"]: item["metadata"]["version"] for item in data["install"]}


def run_plan_torch_step(tmp_path: Path, index_url: str, torch_index: str) -> dict[str, str]:
    report = tmp_path / "report.json"
    command = [sys.executable, str(ROOT / "install" / "plan.py"), "run", "--only", "torch"]
    command += ["--torch-index", torch_index, "--"]
    command += ["--dry-run", "--ignore-installed", "--report", str(report)]
    command += ["--index-url", index_url]
    result = subprocess.run(command, env=pip_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return installed(report)


@pytest.mark.skipif(sys.platform != "linux", reason="the CPU build is chosen on Linux")
def test_the_plan_takes_torch_cpu_from_the_cpu_index_not_pypis_cuda_build(index, tmp_path):
    chosen = run_plan_torch_step(tmp_path, index["pypi"], torch_index=index["cpu"])
    assert chosen["torch"] == "2.13.0+cpu", chosen
    assert not [name for name in chosen if name.startswith("nvidia-")], chosen


@pytest.mark.skipif(sys.platform != "linux", reason="the CPU build is chosen on Linux")
def test_without_the_cpu_index_the_plan_takes_the_cpu_build_from_the_configured_index(
    index, tmp_path
):
    # As on this machine: PyTorch's index unreachable (nothing listens on that port), the
    # configured index holding both builds. The probe gives up at once, it does not hang.
    unreachable = f"http://127.0.0.1:{free_port()}/simple"
    started = time.monotonic()
    chosen = run_plan_torch_step(tmp_path, index["both"], torch_index=unreachable)
    assert chosen["torch"] == "2.13.0+cpu", chosen
    assert not [name for name in chosen if name.startswith("nvidia-")], chosen
    assert time.monotonic() - started < 120  # a hung probe would be 5 s per try; pip is slower


def test_the_fake_index_gives_a_plain_torch_request_the_cuda_build(index, tmp_path):
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "pip", "install", "torch==2.13.0", "--dry-run"]
    command += ["--ignore-installed", "--report", str(report), "--index-url", index["pypi"]]
    result = subprocess.run(command, env=pip_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "nvidia-cublas-cu13" in installed(report)


def test_plans_per_platform() -> None:
    never = lambda url: "unreachable"  # noqa: E731
    always = lambda url: None  # noqa: E731
    linux = plan.steps("run", "linux", "x86_64", torch_index="https://cpu.example", probe=always)
    assert linux[0][1] == [
        "install",
        "torch==2.13.0+cpu",
        "--extra-index-url",
        "https://cpu.example",
    ]
    assert "--find-links" in linux[1][1]  # the tensorflow shim
    assert linux[1][1][linux[1][1].index("-r") + 1].endswith("install/lock/run.txt")
    arm = plan.steps("test", "linux", "aarch64", probe=never)
    assert arm[0][1] == ["install", "torch==2.13.0+cpu"]  # never the CUDA build
    assert "--find-links" not in arm[1][1]
    mac = plan.steps("run", "darwin", "arm64", probe=always)
    assert mac[0][1] == ["install", "torch==2.13.0"]
    assert "--find-links" not in mac[1][1]
    assert [name for name, _, _ in mac] == ["torch", "lock", "project", "check"]


def test_an_unreachable_index_answers_at_once() -> None:
    started = time.monotonic()
    assert plan.reachable(f"http://127.0.0.1:{free_port()}/simple", timeout_s=5) is not None
    assert time.monotonic() - started < 5


def lock_lines(name: str) -> dict[str, str]:
    text = (LOCKS / f"{name}.txt").read_text().replace("\\\n", " ")
    lines = [" ".join(line.split()) for line in text.splitlines() if line and line[0] != "#"]
    return {line.split(" ;")[0].split(" --hash")[0]: line for line in lines}


def test_the_locks_pin_every_package_with_hashes_and_run_is_within_test() -> None:
    run, test = lock_lines("run"), lock_lines("test")
    for pinned, line in test.items():
        assert re.fullmatch(r"[a-z0-9_.\-]+==\S+", pinned), line
        assert "--hash=sha256:" in line, line
    assert set(run) <= set(test)
    # Where both sets have a package, the same version and hashes.
    assert all(run[pinned] == test[pinned] for pinned in run)
    names = {pinned.split("==")[0] for pinned in run}
    assert {"ray", "tensorflow-serving-api", "tensorflow-cpu", "onnxruntime", "onnx"} <= names
    assert "torch" not in names and "serve-app" not in names  # installed apart
    assert not [n for n in names if n.startswith("nvidia-")]
    test_only = {pinned.split("==")[0] for pinned in test} - names
    assert {"pytest", "flask"} <= test_only


def test_the_tensorflow_shim_is_rebuilt_byte_for_byte_and_is_the_locked_one(tmp_path) -> None:
    committed = ROOT / "install" / "wheels" / SHIM.name
    assert sha256(write_shim(tmp_path)) == sha256(committed)
    line = lock_lines("run")[f"tensorflow=={SHIM.version}"]
    assert f"--hash=sha256:{sha256(committed)}" in line
    assert "platform_machine == 'x86_64'" in line  # elsewhere the real tensorflow is locked
