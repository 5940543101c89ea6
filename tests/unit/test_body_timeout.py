"""A request body that stops arriving: 408 after the idle timeout, 504 at the request's
deadline, and its bytes given back to the ingress's body budget either way."""

from __future__ import annotations

import asyncio
import time

import pytest

from serve_app.config import ConfigError, parse_ingress_app
from serve_app.errors import DeadlineExceeded, RequestTimeout
from serve_app.guard import Settings
from serve_app.http import error_reply, read_body
from serve_app.limits import BodyBudget
from serve_app.routes import TABLE


def _stalling(*chunks: bytes):
    """An ASGI receive that hands over ``chunks`` (more to come) and then waits forever,
    as a client that stops short of its Content-Length."""
    queue = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]

    async def receive() -> dict:
        if queue:
            return queue.pop(0)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return receive


def test_a_stalled_upload_gets_408_and_gives_back_its_bytes() -> None:
    async def scenario() -> None:
        budget = BodyBudget(limit=1000)
        with pytest.raises(RequestTimeout) as stalled:
            await read_body(_stalling(b"a" * 99), "100", 1000, budget, idle_timeout_s=0.05)
        assert stalled.value.status_code == 408
        assert "99 of 100 bytes" in str(stalled.value)
        assert "ingress.body_idle_timeout_s" in str(stalled.value)
        assert budget.held == 0

    asyncio.run(scenario())


def test_an_upload_that_keeps_coming_is_bounded_by_the_deadline_not_the_idle_timeout() -> None:
    async def scenario() -> None:
        budget = BodyBudget(limit=1000)
        deadline = time.monotonic() + 0.05
        with pytest.raises(DeadlineExceeded, match="deadline"):
            await read_body(_stalling(b"a"), "10", 1000, budget, 60.0, deadline)
        assert budget.held == 0

    asyncio.run(scenario())


def test_a_body_that_arrives_is_read_whole() -> None:
    async def scenario() -> bytes:
        budget = BodyBudget(limit=1000)
        messages = [
            {"type": "http.request", "body": b"ab", "more_body": True},
            {"type": "http.request", "body": b"c", "more_body": False},
        ]

        async def receive() -> dict:
            await asyncio.sleep(0.01)
            return messages.pop(0)

        body = await read_body(receive, "3", 1000, budget, 1.0, time.monotonic() + 10)
        assert budget.held == 3
        return body

    assert asyncio.run(scenario()) == b"abc"


def test_a_slow_upload_that_keeps_coming_is_read_whole() -> None:
    async def scenario() -> bytes:
        budget = BodyBudget(limit=1000)
        chunks = [b"x"] * 6

        async def receive() -> dict:
            await asyncio.sleep(0.03)  # each within the idle timeout; all of them past it
            chunk = chunks.pop()
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

        return await read_body(receive, "6", 1000, budget, 0.05)

    assert asyncio.run(scenario()) == b"x" * 6


def test_a_cancelled_read_stays_cancelled_and_gives_back_its_bytes() -> None:
    async def scenario() -> None:
        budget = BodyBudget(limit=1000)
        task = asyncio.create_task(read_body(_stalling(b"ab"), "3", 1000, budget, 60.0))
        await asyncio.sleep(0.01)
        task.cancel()  # the client went away: not a 408
        with pytest.raises(asyncio.CancelledError):
            await task
        assert budget.held == 0

    asyncio.run(scenario())


def test_the_408_speaks_each_protocol_and_closes_the_connection() -> None:
    error = RequestTimeout("the request body stopped arriving")
    v2 = error_reply(error, TABLE.match("POST", "/v2/models/m/infer").errors)
    openai = error_reply(error, TABLE.match("POST", "/v1/completions").errors)
    assert v2.status == openai.status == 408
    assert v2.body == b'{"error":"the request body stopped arriving"}'
    assert b'"message":"the request body stopped arriving"' in openai.body
    assert v2.headers == {"Connection": "close"}


def test_the_idle_timeout_is_a_validated_ingress_setting() -> None:
    assert Settings.from_args({}).body_idle_timeout_s == 10.0
    assert Settings.from_args({"body_idle_timeout_s": 2.5}).body_idle_timeout_s == 2.5
    for bad in (0, -1, "soon", 7200):
        with pytest.raises(ConfigError, match="body_idle_timeout_s"):
            parse_ingress_app({"body_idle_timeout_s": bad})
