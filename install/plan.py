"""The install plan: what ``make run``, ``make test``, the Dockerfile and CI install, in order.

    python install/plan.py run     # serving: the cpu and examples extras (make run)
    python install/plan.py test    # serving and the test extra (make test)

Standard library only; it installs into the environment of the Python that runs it (the venv's,
from the Makefile). Steps, each one ``pip install`` whose progress shows:

1. torch 2.13.0, alone (the lock leaves it out). On Linux the CPU build, ``torch==2.13.0+cpu``:
   PyPI has only the CUDA build for Linux (2.7 GB of ``nvidia-*`` wheels), PyTorch's CPU index
   has this one. The CPU index is added when it answers within a few seconds; otherwise pip's
   configured indexes are asked for the same ``+cpu`` build (a mirror, or a machine whose
   configured index serves it), and if none has it the install stops: never the CUDA build.
   On macOS, PyPI's ``torch==2.13.0`` (a CPU/MPS build).
2. The lock, ``install/lock/<set>.txt``: every other package, pinned, with hashes, for Linux
   x86_64 and aarch64 and macOS arm64 (``pip install --require-hashes --no-deps``). On Linux
   x86_64 it includes the ``tensorflow`` shim from ``install/wheels/`` (see install/README.md).
3. The project itself (editable by default), without dependencies; then ``pip check``.

Anything after ``--`` is passed to every pip call (e.g. ``-- --dry-run --report out.json``);
``--only torch`` runs one step (the install-plan test serves its own index to step 1).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TORCH_VERSION = "2.13.0"
TORCH_CPU_INDEX = os.environ.get("TORCH_CPU_INDEX", "https://download.pytorch.org/whl/cpu")
PYTHONS = ((3, 11), (3, 12))  # pyproject.toml's requires-python; the locks cover both
PROBE_TIMEOUT_S = 5.0


def linux_x86_64(system: str, machine: str) -> bool:
    return system == "linux" and machine in ("x86_64", "amd64")


def reachable(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when ``url`` answers within ``timeout_s``; otherwise why not."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/torch/", timeout=timeout_s):
            return None
    except Exception as error:  # DNS, refused, timeout, HTTP error: all mean "not this index"
        return f"{type(error).__name__}: {error}"


def torch_step(system: str, torch_index: str, probe=reachable) -> tuple[list[str], str]:
    """pip's arguments for torch, and one line saying where it comes from."""
    if system != "linux":
        return [f"torch=={TORCH_VERSION}"], f"torch {TORCH_VERSION} from the configured index"
    args = [f"torch=={TORCH_VERSION}+cpu"]
    why_not = probe(torch_index)
    if why_not is None:
        return [*args, "--extra-index-url", torch_index], f"torch CPU build from {torch_index}"
    return args, (
        f"PyTorch's CPU index {torch_index} is not reachable ({why_not[:120]}); asking pip's"
        f" configured indexes for torch {TORCH_VERSION}+cpu"
    )


def steps(
    install_set: str,
    system: str | None = None,
    machine: str | None = None,
    torch_index: str = TORCH_CPU_INDEX,
    editable: bool = True,
    probe=reachable,
) -> list[tuple[str, list[str]]]:
    """The plan: (what, pip arguments) per step, for this machine unless told another."""
    system = system or sys.platform
    machine = machine or platform.machine().lower()
    torch_args, torch_note = torch_step(system, torch_index, probe)
    lock = ["--require-hashes", "--no-deps", "-r", str(HERE / "lock" / f"{install_set}.txt")]
    if linux_x86_64(system, machine):
        lock += ["--find-links", str(HERE / "wheels")]
    project = ["--no-deps", "--no-build-isolation", *(["-e"] if editable else []), str(ROOT)]
    return [
        ("torch", ["install", *torch_args], torch_note),
        ("lock", ["install", *lock], f"the locked dependencies (install/lock/{install_set}.txt)"),
        ("project", ["install", *project], "serve-app itself"),
        ("check", ["check"], "pip check: every installed requirement is satisfied"),
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("set", choices=["run", "test"])
    parser.add_argument("--only", choices=["torch", "lock", "project", "check"], action="append")
    parser.add_argument("--skip", choices=["torch", "lock", "project", "check"], action="append")
    parser.add_argument("--no-editable", action="store_true", help="install the project as such")
    parser.add_argument("--torch-index", default=TORCH_CPU_INDEX)
    args = parser.parse_args(argv)

    if sys.version_info[:2] not in PYTHONS:
        wanted = " or ".join(f"{a}.{b}" for a, b in PYTHONS)
        print(
            f"install/plan.py: Python {sys.version.split()[0]} is not supported; use {wanted}"
            " (e.g. make run PYTHON=python3.11)",
            file=sys.stderr,
        )
        return 2
    for name, pip_args, note in steps(
        args.set, torch_index=args.torch_index, editable=not args.no_editable
    ):
        if (args.only and name not in args.only) or (args.skip and name in args.skip):
            continue
        print(f"install/plan.py [{name}]: {note}", flush=True)
        extra = passthrough if pip_args[0] == "install" else []
        result = subprocess.run([sys.executable, "-m", "pip", *pip_args, *extra])
        if result.returncode != 0:
            print(
                f"install/plan.py [{name}] failed (pip exited {result.returncode})", file=sys.stderr
            )
            return result.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
