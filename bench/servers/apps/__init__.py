"""The peer servers' apps: each runs in its own virtual environment (bench/.venvs/<peer>).

They import only ``bench.models`` (and numpy) from this repository, plus the peer's package.
"""
