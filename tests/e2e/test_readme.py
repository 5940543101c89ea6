"""`make run`'s service answers the README's calls as the README shows.

Starts `serve run serve_config.yaml` from the repository root (its own Ray cluster), runs
every command of the README's ``console`` blocks and compares the output: numbers within
a relative 1e-3, everything else exactly.
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
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def readme_examples() -> list[tuple[str, str]]:
    """(command, expected output) pairs from the README's ```console blocks."""
    examples: list[tuple[str, str]] = []
    for block in re.findall(r"```console\n(.*?)```", README.read_text(), flags=re.S):
        for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
            command, _, expected = chunk.partition("\n")
            examples.append((command, expected.strip()))
    return examples


def same_output(actual: str, expected: str) -> bool:
    if NUMBER.sub("#", actual) != NUMBER.sub("#", expected):
        return False
    pairs = zip(NUMBER.findall(actual), NUMBER.findall(expected))
    return all(float(a) == pytest.approx(float(e), rel=1e-3, abs=1e-6) for a, e in pairs)


def test_readme_has_examples_for_every_model() -> None:
    commands = " ".join(command for command, _ in readme_examples())
    for model in ("digits", "minilm", "tiny-gpt2"):
        assert f"/v1/models/{model}:predict" in commands


@pytest.mark.parametrize(("command", "expected"), readme_examples())
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
