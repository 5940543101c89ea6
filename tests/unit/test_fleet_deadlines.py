"""Reads of Serve's state are bounded by the request's deadline (issue 25, item 11).

The ingress reads Serve's view of the fleet (which models run, which failed) from Serve's
controller, which can be slow to answer. Status, metadata, readiness and stream steps used
to wait for that read without limit: a 1.5 s deadline was answered after 5 s. Here the data
plane is real and the controller is stood in for by a reader that stays stuck until the test
frees it; every answer must come while it is still stuck. Model calls are stood in for by
awaitables that answer after a delay, or never. No Ray.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

import pytest

from serve_app.call import CallContext
from serve_app.dataplane import DataPlane, ModelRoute
from serve_app.errors import DeadlineExceeded
from serve_app.guard import Settings
from serve_app.shared_read import SharedRead

T = TypeVar("T")
# Bounded waits, so that a hang fails the test instead of stalling the run.
HANG_S = 20.0


class Controller:
    """Serve's controller as the fleet reads it: it answers at once, or once ``stuck`` is
    set it holds every read until the test frees it."""

    def __init__(self) -> None:
        self.stuck = threading.Event()
        self.released = threading.Event()
        self.in_read = 0
        self.reads = 0

    def read(self) -> tuple[dict, dict]:
        self.reads += 1
        if self.stuck.is_set():
            self.in_read += 1
            try:
                self.released.wait(HANG_S * 3)
            finally:
                self.in_read -= 1
        return {}, {}

    def free(self) -> None:
        self.stuck.clear()
        self.released.set()


class Response:
    """A model call's response: its value after ``delay`` seconds, or never (None)."""

    def __init__(self, value: Any, delay: float | None) -> None:
        self.value, self.delay = value, delay
        self.cancelled = False

    def __await__(self) -> Generator[Any, None, Any]:
        return self._answer().__await__()

    async def _answer(self) -> Any:
        if self.delay is None:
            await asyncio.Event().wait()
        await asyncio.sleep(self.delay or 0.0)
        return self.value

    def cancel(self) -> None:
        self.cancelled = True


class Method:
    def __init__(self, handle: Handle) -> None:
        self.handle = handle

    def remote(self, *args: Any) -> Response:
        self.handle.calls.append(Response({"versions": [1]}, self.handle.delay))
        return self.handle.calls[-1]


class Handle:
    """A deployment handle whose every method answers after ``delay`` seconds (or never)."""

    def __init__(self, delay: float | None) -> None:
        self.delay = delay
        self.calls: list[Response] = []

    def options(self, **_: Any) -> Handle:
        return self

    def __getattr__(self, method: str) -> Method:
        return Method(self)


def plane_with(controller: Controller, delay: float | None, **settings: Any) -> DataPlane:
    """A data plane serving model ``m`` of its own application; Serve read via ``controller``."""
    handles, routes = {"m": Handle(delay)}, {"m": ModelRoute("tensorflow")}
    plane = DataPlane("app", handles, routes, Settings(**settings))  # type: ignore[arg-type]
    plane.fleet._read = controller.read  # type: ignore[method-assign]
    return plane


def ctx(seconds: float) -> CallContext:
    return CallContext(deadline=time.monotonic() + seconds)


def run(controller: Controller, scenario: Callable[[], Awaitable[T]]) -> T:
    """Run ``scenario``, hangs turned into failures; the stuck reads are freed afterwards."""

    async def bounded() -> T:
        try:
            return await asyncio.wait_for(scenario(), HANG_S)
        finally:
            controller.free()

    return asyncio.run(bounded())


async def stale_view(plane: DataPlane, controller: Controller) -> None:
    """A first view of the fleet, read at once; from now on the controller is stuck, and the
    view is made old enough that the next look at the fleet reads it again."""
    await plane.fleet.ready()
    assert controller.reads == 1
    controller.stuck.set()
    plane.fleet._reading._read_at = float("-inf")


def test_a_status_call_is_answered_while_the_controller_read_is_stuck() -> None:
    # The model takes 1.5 s (past the 1 s after which the fleet is looked at again).
    controller = Controller()
    plane = plane_with(controller, delay=1.5)

    async def scenario() -> tuple[Any, int]:
        await stale_view(plane, controller)
        answer = await plane.call(ctx(10.0), "m", "model_io")
        return answer, controller.in_read

    answer, stuck_reads = run(controller, scenario)
    assert answer == {"versions": [1]}
    assert stuck_reads == 1  # answered while the read it started was still stuck


def test_a_deadline_passes_while_the_controller_read_is_stuck() -> None:
    controller = Controller()
    plane = plane_with(controller, delay=None)  # the model never answers

    async def scenario() -> tuple[DeadlineExceeded, int, bool]:
        await stale_view(plane, controller)
        with pytest.raises(DeadlineExceeded) as raised:
            await plane.call(ctx(1.5), "m", "model_io")
        handle: Handle = plane.handles["m"]  # type: ignore[assignment]
        return raised.value, controller.in_read, handle.calls[-1].cancelled

    error, stuck_reads, cancelled = run(controller, scenario)
    assert error.status_code == 504
    assert "model 'm' did not answer within the request's deadline" in str(error)
    assert stuck_reads == 1
    assert cancelled  # the model call is cancelled, as at any deadline


def test_a_stream_step_is_bounded_while_the_controller_read_is_stuck() -> None:
    controller = Controller()
    plane = plane_with(controller, delay=None)

    async def scenario() -> int:
        await stale_view(plane, controller)
        with pytest.raises(DeadlineExceeded):
            await plane.answer(ctx(1.5), "m", Response(None, None))
        return controller.in_read

    assert run(controller, scenario) == 1


def test_the_first_view_is_waited_for_within_the_deadline_only() -> None:
    controller = Controller()
    controller.stuck.set()  # stuck from the first read on: no view in hand
    plane = plane_with(controller, delay=None)

    async def scenario() -> tuple[DeadlineExceeded, DeadlineExceeded, int]:
        # A model the ingress cannot know without the view: 504, not a guessed 404.
        with pytest.raises(DeadlineExceeded) as unknown:
            await plane.call(ctx(0.5), "other", "model_io")
        # Its own model is known without it, but the deadline went on waiting for the view.
        with pytest.raises(DeadlineExceeded) as known:
            await plane.call(ctx(0.5), "m", "model_io")
        return unknown.value, known.value, controller.in_read

    unknown, known, stuck_reads = run(controller, scenario)
    assert unknown.status_code == 504
    assert "deadline passed while Serve's controller was still answering" in str(unknown)
    assert "model 'other'" in str(unknown)
    assert known.status_code == 504
    assert stuck_reads == 1  # one shared read, still stuck


def test_readiness_answers_from_the_view_in_hand_while_the_controller_is_stuck() -> None:
    controller = Controller()
    controller.stuck.set()
    # A probe without a deadline of its own gets the default one (request_timeout_s).
    plane = plane_with(controller, delay=0.0, request_timeout_s=0.5)

    async def scenario() -> tuple[bool, bool, bool, int]:
        no_view = await plane.ready()  # no view yet: not ready once the deadline passes
        controller.free()
        await plane.fleet.refresh(max_age=0.0)  # the controller answers: a view in hand
        viewed = await plane.ready()
        controller.released.clear()
        controller.stuck.set()
        plane.fleet._reading._read_at = float("-inf")
        stale = await plane.ready(ctx(60.0))  # a stuck read: the view in hand answers, <= 1 s
        in_deadline = await plane.ready(ctx(0.2))  # the request's deadline bounds it too
        return no_view, viewed, stale and in_deadline, controller.in_read

    no_view, viewed, stale, stuck_reads = run(controller, scenario)
    assert (no_view, viewed, stale) == (False, True, True)
    assert stuck_reads == 1


def test_a_shared_read_waited_for_with_a_limit_goes_on_for_the_next_caller() -> None:
    release = asyncio.Event()
    readings = 0

    async def read() -> None:
        nonlocal readings
        readings += 1
        await release.wait()

    async def scenario() -> tuple[bool, bool, int]:
        shared = SharedRead(read)
        impatient = await shared.refresh(max_age=0.0, timeout=0.05)
        waiting = asyncio.create_task(shared.refresh(max_age=0.0))
        await asyncio.sleep(0.05)
        release.set()
        patient = await asyncio.wait_for(waiting, HANG_S)
        return impatient, patient, readings

    assert asyncio.run(scenario()) == (False, True, 1)  # one reading, not cancelled
