"""The ingress guards (auth, deadlines, limits, overload) as pure code, without Ray."""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import re

import pytest

from serve_app import guard, metrics
from serve_app.asgi import RestEntry
from serve_app.config import ConfigError, parse_app_config
from serve_app.dataplane import DataPlane
from serve_app.errors import (
    DeadlineExceeded,
    InvalidInput,
    Overloaded,
    Unauthorized,
    tfserving_error_body,
)
from serve_app.http import Reply
from serve_app.protocols import openai
from serve_app.rest import RestRequest, Route, RouteTable

TOKEN = "s3cret-token-0123456789"


def _args(**more):
    model = {"name": "m", "framework": "tensorflow", "uri": "/models/m"}
    return {"models": [model], **more}


def test_config_accepts_the_robustness_settings():
    config = parse_app_config(
        {
            "models": [
                {
                    "name": "m",
                    "framework": "tensorflow",
                    "uri": "/models/m",
                    "max_queued_requests": 4,
                }
            ],
            "ingress": {
                "request_timeout_s": 5,
                "max_request_timeout_s": 10,
                "max_instances_per_request": 8,
                "auth_tokens": [TOKEN],
                "overload": {"status_code": 429, "retry_after_s": 2},
            },
        }
    )
    assert config.models[0].max_queued_requests == 4
    assert config.ingress.overload.status_code == 429
    assert config.ingress.auth_tokens == [TOKEN]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (_args(ingress={"overload": {"status_code": 500}}), "overload.status_code"),
        (_args(ingress={"overload": {"retry_after": 1}}), "unknown key 'retry_after'"),
        (_args(ingress={"request_timeout_s": 20, "max_request_timeout_s": 10}), "exceeds"),
        (_args(ingress={"auth_tokens": ["short"]}), "auth_tokens"),
        (_args(ingress={"max_instances_per_request": 0}), "max_instances_per_request"),
        (_args(ingress={"auth_tokens_env": "BAD-NAME"}), "auth_tokens_env"),
    ],
)
def test_config_refuses_bad_robustness_settings(args, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_app_config(args)


def test_max_queued_requests_reaches_the_ingress_not_serve():
    """Requests travel coalesced, so Serve's queue would count calls: the ingress bounds them."""
    from serve_app.app import model_deployment, route_settings

    config = parse_app_config(
        {
            "models": [
                {"name": "m", "framework": "tensorflow", "uri": "/m", "max_queued_requests": 3}
            ]
        }
    )
    assert route_settings(config.models[0])["max_queued_requests"] == 3
    assert model_deployment(config.models[0])._deployment_config.max_queued_requests == -1


def test_settings_from_args_merges_env_tokens(monkeypatch):
    monkeypatch.setenv("MY_TOKENS", " a-token-from-the-env , ,other-token-from-env")
    settings = guard.Settings.from_args(
        {"auth_tokens": [TOKEN], "auth_tokens_env": "MY_TOKENS", "overload": {"status_code": 429}}
    )
    assert settings.tokens == (TOKEN, "a-token-from-the-env", "other-token-from-env")
    assert settings.overload_status == 429


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (None, "holds no token (it is unset)"),
        ("   ", "holds no token (it is blank)"),
        (" , ,, ", "holds no token (it is blank)"),
        ("a-token-from-the-env,x", "token 1 of MY_TOKENS has 1 characters; tokens need 16"),
    ],
)
def test_auth_never_fails_open_on_an_empty_or_weak_env_variable(monkeypatch, value, fragment):
    monkeypatch.delenv("MY_TOKENS", raising=False)
    if value is not None:
        monkeypatch.setenv("MY_TOKENS", value)
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        guard.Settings.from_args({"auth_tokens_env": "MY_TOKENS"})


def test_effective_timeout_defaults_bounds_and_refuses():
    settings = guard.Settings(request_timeout_s=7, max_request_timeout_s=30)
    assert guard.effective_timeout(None, settings) == 7
    assert guard.effective_timeout("2.5", settings) == 2.5
    assert guard.effective_timeout("9999", settings) == 30
    for bad in ("0", "-1", "abc", "nan", "inf", ""):
        with pytest.raises(InvalidInput, match="X-Request-Timeout-Seconds"):
            guard.effective_timeout(bad, settings)


def test_deadline_margin_is_small_and_positive():
    assert guard.deadline_margin(0.2) == 0.05
    assert guard.deadline_margin(2) == pytest.approx(0.2)
    assert guard.deadline_margin(300) == 0.5


def test_check_auth():
    guard.check_auth(None, ())  # no tokens configured: open
    guard.check_auth(f"Bearer {TOKEN}", (TOKEN,))
    guard.check_auth(f"bearer {TOKEN}", ("other-token-0123456", TOKEN))
    for header in (None, "", TOKEN, f"Basic {TOKEN}", "Bearer ", "Bearer wrong-token-0123456"):
        with pytest.raises(Unauthorized):
            guard.check_auth(header, (TOKEN,))


def test_check_auth_compares_tokens_as_utf8_bytes():
    token = "s3cret-t\u00f6k\u00e9n-\u2603-0123456789"
    # ASGI hands header values over as bytes: a client sends a non-ASCII token as UTF-8.
    guard.check_auth(b"Bearer " + token.encode("utf-8"), (TOKEN, token))
    guard.check_auth(f"Bearer {token}", (token,))  # text (gRPC metadata): encoded as UTF-8
    guard.check_auth(b"Bearer " + TOKEN.encode() + b" ", (TOKEN,))  # trailing space: ignored
    for wrong in (
        b"Bearer " + token.encode("latin-1", "replace"),  # the same text in another encoding
        b"Bearer " + token.encode("utf-8")[:-1],
        b"Bearer \xff\xfe",
        "Bearer \ud800",  # a lone surrogate: no token is spelled so
    ):
        with pytest.raises(Unauthorized, match="invalid bearer token"):
            guard.check_auth(wrong, (TOKEN, token))


def test_tokens_from_the_environment_keep_their_bytes():
    token = "t\u00f6ken-from-the-env-0123"
    assert guard.token_bytes(token) == token.encode("utf-8")
    # Python decodes environment bytes that are not UTF-8 with surrogateescape.
    raw = b"tok\xffen-not-utf8-0123456"
    assert guard.token_bytes(raw.decode("utf-8", "surrogateescape")) == raw


def test_open_paths_are_the_probes_only():
    assert guard.is_open("/v2/health/live")
    assert guard.is_open("/v2/health/ready/")
    assert guard.is_open("/myapp/v2/health/ready/", "/myapp")
    assert guard.is_open("/-/healthz")
    assert not guard.is_open("/v2/models/m/infer")
    assert not guard.is_open("/v2/models/m/stats")
    assert not guard.is_open("/v1/completions")
    # A route that merely ends in a probe's path is a model route: it needs the token.
    assert not guard.is_open("/v1/models/m/v2/health/live")
    assert not guard.is_open("/v2/models/m/stats/-/healthz")
    assert not guard.is_open("/myapp/v2/models/v2/health/ready", "/myapp")


def test_errors_pickle_with_their_status_and_headers():
    error = pickle.loads(pickle.dumps(Overloaded("busy", 429, 3)))
    assert (error.status_code, error.headers, str(error)) == (429, {"Retry-After": "3"}, "busy")
    assert pickle.loads(pickle.dumps(Overloaded("busy"))).headers == {}
    assert pickle.loads(pickle.dumps(DeadlineExceeded("late"))).status_code == 504
    assert Unauthorized("no").headers["WWW-Authenticate"].startswith("Bearer")


def test_metrics_recording_never_raises_outside_ray():
    metrics.record_request("m", 200, 0.01)
    metrics.record_batch("m", 4, 2)
    metrics.record_load("m", 1.5, ok=True)
    metrics.record_versions("m", 1)


def _call(entry_with, path: str, headers: dict[str, str | bytes]):
    """One GET of ``path`` through the REST entry ``entry_with(handler)``: (status, headers,
    body, what the route's handler saw of the call)."""
    sent: list[dict] = []
    seen: dict = {}

    async def handler(request: RestRequest) -> Reply:
        seen["deadline"] = request.ctx.deadline
        seen["request_id"] = request.ctx.request_id
        return Reply(b"{}")

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "headers": [
            (k.lower().encode(), v if isinstance(v, bytes) else v.encode())
            for k, v in headers.items()
        ],
    }
    asyncio.run(entry_with(handler)(scope, receive, send))
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), body, seen


def entry(**settings):
    """The REST entry over a data plane with these ingress settings (no model, no Ray), and
    a table of two routes answered by the test's handler: ``/v1/completions`` in OpenAI's
    error body, every other path in TF Serving's."""
    plane = DataPlane("app", {}, {}, guard.Settings(**settings))

    def entry_with(handler):
        table = RouteTable(
            [
                Route("GET", "/v1/completions", handler, openai.error_body),
                Route("GET", "/{path:path}", handler, tfserving_error_body),
            ]
        )
        return RestEntry(plane, None, table)

    return entry_with


def test_middleware_refuses_without_token_in_the_protocol_body():
    guarded = entry(tokens=(TOKEN,))
    status, headers, body, seen = _call(guarded, "/v1/completions", {})
    assert status == 401 and not seen
    assert headers[b"www-authenticate"].startswith(b"Bearer")
    assert "bearer token" in json.loads(body)["error"]["message"]
    status, _, body, _ = _call(guarded, "/v2/models/m/infer", {})
    assert status == 401 and "bearer token" in json.loads(body)["error"]
    status, _, _, seen = _call(guarded, "/v2/health/ready", {})
    assert status == 200
    status, _, _, seen = _call(
        guarded,
        "/v2/models/m/infer",
        {"Authorization": f"Bearer {TOKEN}", "X-Request-Id": "abc-1"},
    )
    assert status == 200 and seen["request_id"] == "abc-1" and seen["deadline"] is not None
    status, _, body, _ = _call(
        guarded,
        "/v2/models/m/infer",
        {"Authorization": f"Bearer {TOKEN}", "X-Request-Timeout-Seconds": "soon"},
    )
    assert status == 400 and "X-Request-Timeout-Seconds" in json.loads(body)["error"]


def test_middleware_accepts_a_non_ascii_token_sent_as_utf8():
    token = "t\u00f6k\u00e9n-\u2603-0123456789"
    guarded = entry(tokens=(token,))
    header = b"Bearer " + token.encode("utf-8")
    status, _, _, seen = _call(guarded, "/v2/models/m/stats", {"Authorization": header})
    assert status == 200 and seen
    status, _, _, seen = _call(guarded, "/v2/models/m/stats", {})
    assert status == 401 and not seen


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_access_log_writes_one_escaped_line_for_a_path_with_cr_lf():
    # The path arrives percent-decoded: %0A%0D is a real newline and carriage return.
    forged = "/v1/models/m\n\rGET /v1/models/admin:predict -> 200:predict"
    log = logging.getLogger("ray.serve")
    handler, level = _Lines(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        status, _, _, _ = _call(
            entry(access_log=True),
            forged,
            {"X-Request-Id": "id\tw\u00e9\\x0a"},
        )
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert status == 200
    (line,) = [message for message in handler.lines if "->" in message]
    assert "\n" not in line and "\r" not in line and "\t" not in line
    assert "/v1/models/m\\x0a\\x0dGET /v1/models/admin:predict -> 200:predict -> 200" in line
    # A backslash is escaped too, so an escape in the log always means a byte that was sent.
    assert "request id id\\x09w\\xc3\\xa9\\x5cx0a)" in line  # é as its UTF-8 bytes


def test_log_safe_keeps_printable_ascii_and_escapes_the_rest():
    assert guard.log_safe("/v2/models/m/infer?x=1") == "/v2/models/m/infer?x=1"
    assert guard.log_safe("a\x00\x7f\u2603\U0001f600") == "a\\x00\\x7f\\u2603\\U0001f600"
