"""One replica of a model at a time swaps versions the resource-preserving way.

With ``swap_policy: resource`` a replica unloads its serving version before it loads the
new one, so it cannot answer in between. If every replica of the model did that at once,
the whole model would be down; instead each replica takes its turn through a small named
Ray actor per model (created by whichever replica needs it first), and the others answer
meanwhile. A model with one replica needs no turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import ray
from ray import serve

logger = logging.getLogger("ray.serve")

# A turn not given back by then (its replica died mid-swap) goes to the next replica.
TURN_EXPIRES_S = 900.0
POLL_S = 0.2


@ray.remote(num_cpus=0)
class SwapTurns:
    """Who swaps now, among one model's replicas."""

    def __init__(self) -> None:
        self.holder: str | None = None
        self.since = 0.0

    def take(self, replica: str) -> bool:
        expired = time.monotonic() - self.since > TURN_EXPIRES_S
        if self.holder in (None, replica) or expired:
            self.holder, self.since = replica, time.monotonic()
            return True
        return False

    def give_back(self, replica: str) -> None:
        if self.holder == replica:
            self.holder = None


@contextlib.asynccontextmanager
async def swap_turn(model: str) -> AsyncIterator[None]:
    """Hold the model's swap turn (at once when this is the model's only replica)."""
    context = _replica_context()
    if context is None or context.world_size <= 1:
        yield
        return
    turns = SwapTurns.options(
        name=f"serve-app-swap:{context.app_name}:{context.deployment}:{model}",
        namespace="serve",
        get_if_exists=True,
    ).remote()
    me = context.replica_tag
    while not await turns.take.remote(me):
        await asyncio.sleep(POLL_S)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # the turns actor may be gone; it expires
            await turns.give_back.remote(me)


def _replica_context() -> serve.context.ReplicaContext | None:
    try:
        return serve.get_replica_context()
    except Exception:  # outside a replica (tests of the host alone)
        return None
