"""Regenerate the locks in ``install/lock/`` (maintainers; not run by ``make``).

    .venv/bin/pip install uv          # the resolver used here (pip cannot resolve for another
    python3 install/lock.py           # platform: it evaluates markers on the running machine)

One universal lock per install set (``run``: extras cpu + examples; ``test``: + test), for
Linux x86_64 (manylinux_2_28), Linux aarch64 (manylinux_2_28) and macOS arm64 (14.0), on
Python 3.11 and 3.12. Each platform and Python is resolved on its own from PyPI, wheels only
(``--only-binary :all:``), with hashes; the results are merged into one file whose lines carry
environment markers where they differ. The ``run`` set is resolved within the ``test`` set's
pins, so installing ``test`` after ``run`` only adds packages.

Left out of the locks, installed by ``install/plan.py`` before them: torch (the CPU build from
PyTorch's CPU index on Linux, which the resolver does not reach here; it resolves Linux against
a stand-in wheel that carries the real ``torch 2.13.0+cpu`` metadata) and the project itself.
A platform that cannot resolve is reported with uv's reason, and the lock is still written for
the others: ``install/README.md`` lists what lacks wheels where.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from install.plan import TORCH_VERSION  # noqa: E402
from install.wheelfile import SHIM, write_shim, write_wheel  # noqa: E402

# name -> (uv's --python-platform, MACOSX_DEPLOYMENT_TARGET or None, the environment's marker)
PLATFORMS = {
    "linux-x86_64": (
        "x86_64-manylinux_2_28",
        None,
        "sys_platform == 'linux' and platform_machine == 'x86_64'",
    ),
    "linux-aarch64": (
        "aarch64-manylinux_2_28",
        None,
        "sys_platform == 'linux' and platform_machine == 'aarch64'",
    ),
    "macos-arm64": ("aarch64-apple-darwin", "14.0", "sys_platform == 'darwin'"),
}
PYTHONS = ("3.11", "3.12")
SETS = {"test": "cpu,examples,test", "run": "cpu,examples"}  # test first: run is within it
# torch 2.13.0+cpu's own requirements (read from the wheel), for the Linux stand-in.
TORCH_CPU_REQUIRES = [
    "filelock",
    "typing-extensions>=4.10.0",
    "setuptools>=77.0.3",
    "sympy>=1.13.3",
    "networkx>=2.5.1",
    "jinja2",
    "fsspec>=0.8.5",
]


def find_uv() -> str:
    for candidate in (shutil.which("uv"), str(Path(sys.executable).parent / "uv")):
        if candidate and Path(candidate).exists():
            return candidate
    sys.exit("install/lock.py needs uv: pip install uv")


def project_wheel(links: Path) -> None:
    """The project as a wheel (its metadata is what matters), plus the shim and torch stand-in."""
    had_build = (ROOT / "build").exists()
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(links), str(ROOT)],
        check=True,
    )
    if not had_build:  # setuptools' scratch folder in the source tree
        shutil.rmtree(ROOT / "build", ignore_errors=True)
    write_shim(links)
    write_wheel(links, "torch", f"{TORCH_VERSION}+cpu", TORCH_CPU_REQUIRES)


def resolve(
    uv: str, links: Path, platform: str, python: str, extras: str, constraints: Path | None
):
    target, macos, _ = PLATFORMS[platform]
    requirements = links / f"in-{platform}-{python}-{extras}.txt"
    requirements.write_text(
        "\n".join(
            [
                f"serve-app[{extras}]==0.1.0",
                "setuptools>=77.0.3",  # the project's build backend (and torch's requirement)
                f"torch=={TORCH_VERSION}+cpu ; sys_platform == 'linux'",
                f"torch=={TORCH_VERSION} ; sys_platform == 'darwin'",
                f"tensorflow=={SHIM.version} ; {PLATFORMS['linux-x86_64'][2]}",
            ]
        )
        + "\n"
    )
    out = links / f"out-{platform}-{python}-{extras}.txt"
    command = [
        uv, "pip", "compile", str(requirements), "-o", str(out), "--quiet",
        "--python-platform", target, "--python-version", python,
        "--only-binary", ":all:", "--generate-hashes", "--no-annotate", "--no-header",
        "--index-url", os.environ.get("LOCK_INDEX_URL", "https://pypi.org/simple"),
        "--find-links", str(links), "--no-emit-package", "torch", "--no-emit-package", "serve-app",
    ]  # fmt: skip
    if constraints is not None:
        command += ["--constraint", str(constraints)]
    env = {**os.environ, **({"MACOSX_DEPLOYMENT_TARGET": macos} if macos else {})}
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        return None, result.stderr.strip()
    return out, ""


def parse(path: Path) -> dict[str, tuple[str, set[str]]]:
    """name -> (version, hashes) of a ``uv pip compile --generate-hashes`` output."""
    text = path.read_text().replace("\\\n", " ")
    pins = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([A-Za-z0-9_.\-]+)==(\S+)", line)
        if m is None:
            continue
        pins[m[1].lower()] = (m[2], set(re.findall(r"--hash=(sha256:[0-9a-f]+)", line)))
    return pins


def marker(envs: set[tuple[str, str]]) -> str:
    """The environment marker that selects exactly ``envs`` among those locked."""

    def any_of(clauses: list[str]) -> str:
        return clauses[0] if len(clauses) == 1 else " or ".join(f"({c})" for c in clauses)

    def python_is(versions) -> str:
        return any_of([f"python_version == '{v}'" for v in sorted(versions)])

    platforms = {p for p, _ in envs}
    pythons = {v for _, v in envs}
    if envs == {(p, v) for p in platforms for v in pythons}:  # some platforms x some Pythons
        parts = []
        if platforms != set(PLATFORMS):
            parts.append(any_of([PLATFORMS[p][2] for p in PLATFORMS if p in platforms]))
        if pythons != set(PYTHONS):
            parts.append(python_is(pythons))
        if len(parts) == 2 and " or " in parts[0]:
            parts[0] = f"({parts[0]})"
        return " and ".join(parts)
    clauses = []
    for platform in PLATFORMS:
        versions = {v for p, v in envs if p == platform}
        if versions == set(PYTHONS):
            clauses.append(PLATFORMS[platform][2])
        elif versions:
            clauses.append(f"{PLATFORMS[platform][2]} and {python_is(versions)}")
    return any_of(clauses)


def write_lock(name: str, results: dict[tuple[str, str], dict], failures: dict) -> str:
    merged: dict[tuple[str, str], tuple[set, set]] = {}
    for env, pins in results.items():
        for package, (version, hashes) in pins.items():
            envs, all_hashes = merged.setdefault((package, version), (set(), set()))
            envs.add(env)
            all_hashes |= hashes
    lines = [
        f"# The `{name}` install set (extras {SETS[name]}): written by install/lock.py, installed",
        "# by install/plan.py with `pip install --require-hashes --no-deps`. Do not edit.",
        "# Resolved for: "
        + ", ".join(f"{p} py{v}" for p, v in sorted(results))
        + ". torch and serve-app itself are installed apart (install/plan.py).",
    ]
    for (p, v), reason in sorted(failures.items()):
        first = reason.splitlines()[-1] if reason else "?"
        lines.append(f"# Not resolved for {p} py{v}: {first[:200]}")
    for (package, version), (envs, hashes) in sorted(merged.items()):
        where = marker(envs)
        head = f"{package}=={version}" + (f" ; {where}" if where else "")
        lines.append(" \\\n    ".join([head, *(f"--hash={h}" for h in sorted(hashes))]))
    path = HERE / "lock" / f"{name}.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path.relative_to(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--platform", action="append", choices=list(PLATFORMS))
    args = parser.parse_args()
    platforms = args.platform or list(PLATFORMS)
    uv = find_uv()
    with tempfile.TemporaryDirectory() as tmp:
        links = Path(tmp)
        project_wheel(links)
        done: dict[str, dict] = {name: {} for name in SETS}
        failed: dict[str, dict] = {name: {} for name in SETS}
        for platform in platforms:
            for python in PYTHONS:
                env = (platform, python)
                test_out = None
                for name, extras in SETS.items():
                    out, error = resolve(uv, links, platform, python, extras, test_out)
                    if out is None:
                        failed[name][env] = error
                        print(f"{name} {platform} py{python}: NOT RESOLVED\n{error}\n", flush=True)
                        continue
                    done[name][env] = parse(out)
                    print(f"{name} {platform} py{python}: {len(done[name][env])} packages")
                    test_out = test_out or out
        for name in SETS:
            print("wrote", write_lock(name, done[name], failed[name]))


if __name__ == "__main__":
    main()
