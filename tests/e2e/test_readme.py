"""`make run`'s service answers the documentation's calls as the documentation shows.

Starts `serve run serve_config.yaml` from the repository root (its own Ray cluster), runs
every command of the ``console`` blocks of README.md and of every docs/*.md file and
compares the output: numbers within a relative 1e-3, everything else exactly.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def documented_files() -> list[Path]:
    """The files whose ``console`` blocks are run: README.md, then docs/*.md by name."""
    return [README, *sorted(DOCS.glob("*.md"))]


def console_examples(path: Path) -> list[tuple[str, str]]:
    """(command, expected output) pairs from one file's ```console blocks."""
    examples: list[tuple[str, str]] = []
    for block in re.findall(r"```console\n(.*?)```", path.read_text(), flags=re.S):
        for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
            command, _, expected = chunk.partition("\n")
            examples.append((command, expected.strip()))
    return examples


def readme_examples() -> list[tuple[str, str]]:
    """(command, expected output) pairs from the ```console blocks of README.md and docs/."""
    return [example for path in documented_files() for example in console_examples(path)]


def example_params() -> list:
    """Each example as a test case whose id names its file and its place there."""
    return [
        pytest.param(command, expected, id=f"{path.relative_to(ROOT)}:{index}")
        for path in documented_files()
        for index, (command, expected) in enumerate(console_examples(path), start=1)
    ]


def same_output(actual: str, expected: str) -> bool:
    if NUMBER.sub("#", actual) != NUMBER.sub("#", expected):
        return False
    pairs = zip(NUMBER.findall(actual), NUMBER.findall(expected))
    return all(float(a) == pytest.approx(float(e), rel=1e-3, abs=1e-6) for a, e in pairs)


def test_readme_has_examples_for_every_model() -> None:
    commands = " ".join(command for command, _ in console_examples(README))
    for model in ("digits", "minilm", "tiny-gpt2"):
        assert f"/v1/models/{model}:predict" in commands


@pytest.mark.parametrize(("command", "expected"), example_params())
def test_readme_call_answers_as_shown(served_fleet: None, command: str, expected: str) -> None:
    result = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert same_output(result.stdout.strip(), expected), f"got:\n{result.stdout}"


def test_serve_status_shows_the_fleet(served_fleet: None) -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "serve"), "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RAY_AUTH_MODE": "token"},
    )
    assert result.returncode == 0, result.stderr
    for name in ("digits", "minilm", "tiny-gpt2", "Ingress"):
        assert f"{name}:\n        status: HEALTHY" in result.stdout
