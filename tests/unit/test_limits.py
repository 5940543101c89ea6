"""Bounded work: the ingress's budget of buffered bodies, large decodes off the event loop,
instances counted before they are decoded."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from serve_app import limits
from serve_app.dataplane import DataPlane
from serve_app.errors import InvalidInput, Overloaded, PayloadTooLarge
from serve_app.guard import Settings
from serve_app.http import read_body
from serve_app.limits import BodyBudget
from serve_app.routes.tfserving import _decode


def _receiver(*chunks: bytes):
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]

    async def receive() -> dict:
        return messages.pop(0)

    return receive


def test_bodies_held_at_once_are_bounded_over_all_requests() -> None:
    async def scenario() -> None:
        budget = BodyBudget(limit=100, retry_after_s=2)
        first = await read_body(_receiver(b"a" * 60), None, 1000, budget)
        assert budget.held == 60
        with pytest.raises(Overloaded) as refused:  # 60 + 50 > 100, while the first is held
            await read_body(_receiver(b"b" * 30, b"b" * 20), None, 1000, budget)
        assert refused.value.status_code == 503
        assert refused.value.headers == {"Retry-After": "2"}
        assert "max_buffered_bytes" in str(refused.value)
        assert budget.held == 60  # the refused body gave back what it had taken
        budget.give(len(first))
        assert await read_body(_receiver(b"c" * 90), None, 1000, budget) == b"c" * 90

    asyncio.run(scenario())


def test_content_length_must_be_an_ascii_byte_count() -> None:
    async def scenario() -> None:
        budget = BodyBudget(limit=10**6)
        for bad in ("²", "١٢", "-1", "1e3"):
            with pytest.raises(InvalidInput, match="Content-Length"):
                await read_body(_receiver(b"{}"), bad, 1000, budget)
        with pytest.raises(PayloadTooLarge):
            await read_body(_receiver(b"{}"), "9" * 400, 1000, budget)

    asyncio.run(scenario())


def test_a_large_body_is_decoded_on_a_worker_thread_a_small_one_at_once() -> None:
    async def scenario() -> tuple[str, str]:
        def where(body: bytes) -> str:
            return threading.current_thread().name

        small = await limits.decode(10, where, b"")
        large = await limits.decode(limits.OFF_LOOP_BYTES + 1, where, b"")
        return small, large

    small, large = asyncio.run(scenario())
    assert small == threading.current_thread().name
    assert large != small


def test_instances_are_counted_before_they_are_decoded() -> None:
    plane = DataPlane("app", {}, {}, Settings(max_instances_per_request=4))
    # Five instances, the last of which would not even decode: the count refuses first.
    body = json.dumps({"instances": [[1.0], [1.0], [1.0], [1.0], [{"x": "y"}]]}).encode()
    with pytest.raises(PayloadTooLarge, match="5 instances"):
        _decode(plane, "predict", body, False)
    columns = json.dumps({"inputs": {"x": [[1.0]] * 5}}).encode()
    with pytest.raises(PayloadTooLarge, match="5 instances"):
        _decode(plane, "predict", columns, False)
    examples = json.dumps({"examples": [{"x": 1.0}] * 5}).encode()
    with pytest.raises(PayloadTooLarge, match="5 instances"):
        _decode(plane, "classify", examples, False)
