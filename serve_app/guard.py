"""The ingress's per-request checks, transport-neutral: bearer auth, timeouts, which routes
are open, request ids, log-safe text; and the ingress settings they read.

``serve_app/call.py`` applies them to every call, REST or gRPC.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from typing import Any

from serve_app.config import MAX_TOKEN_CHARS, MIN_TOKEN_CHARS, ConfigError, IngressSpec
from serve_app.errors import InvalidInput, Unauthorized

TIMEOUT_HEADER = "x-request-timeout-seconds"
REQUEST_ID_HEADER = "x-request-id"
# Routes that answer without a token: liveness and readiness probes, and the status page
# ("" is ``/``: static HTML; the data it shows comes from ``/fleet``, which needs the token).
OPEN_PATHS = ("", "/v2/health/live", "/v2/health/ready", "/-/healthz", "/-/routes")


_DEFAULTS = IngressSpec()


@dataclass
class Settings:
    """The ingress settings the guards use, from ``IngressSpec`` (defaults included)."""

    max_request_bytes: int = _DEFAULTS.max_request_bytes
    max_buffered_bytes: int = _DEFAULTS.max_buffered_bytes
    max_instances_per_request: int = _DEFAULTS.max_instances_per_request
    request_timeout_s: float = _DEFAULTS.request_timeout_s
    max_request_timeout_s: float = _DEFAULTS.max_request_timeout_s
    body_idle_timeout_s: float = _DEFAULTS.body_idle_timeout_s
    tokens: tuple[str, ...] = ()
    overload_status: int = _DEFAULTS.overload.status_code
    retry_after_s: int | None = _DEFAULTS.overload.retry_after_s
    access_log: bool = _DEFAULTS.access_log

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Settings:
        """From the app's ``ingress`` args; tokens from ``auth_tokens_env`` are added here,
        on the ingress replica, so they never appear in the config."""
        spec = IngressSpec.model_validate(args)
        tokens = list(spec.auth_tokens)
        if spec.auth_tokens_env:
            tokens += env_tokens(spec.auth_tokens_env)
        return cls(
            max_request_bytes=spec.max_request_bytes,
            max_buffered_bytes=spec.max_buffered_bytes,
            max_instances_per_request=spec.max_instances_per_request,
            request_timeout_s=spec.request_timeout_s,
            max_request_timeout_s=spec.max_request_timeout_s,
            body_idle_timeout_s=spec.body_idle_timeout_s,
            tokens=tuple(tokens),
            overload_status=spec.overload.status_code,
            retry_after_s=spec.overload.retry_after_s,
            access_log=spec.access_log,
        )


def env_tokens(variable: str) -> list[str]:
    """The comma-separated tokens of an environment variable, held to the config's length
    rule. A variable that is unset or holds no usable token refuses to start the ingress:
    auth must never fail open."""
    value = os.environ.get(variable, "")
    tokens = [t.strip() for t in value.split(",") if t.strip()]
    if not tokens:
        raise ConfigError(
            f"ingress.auth_tokens_env names {variable}, which holds no token (it is"
            f" {'unset' if variable not in os.environ else 'blank'}); set it to"
            " comma-separated tokens or remove auth_tokens_env"
        )
    bad = [i for i, t in enumerate(tokens) if not MIN_TOKEN_CHARS <= len(t) <= MAX_TOKEN_CHARS]
    if bad:
        raise ConfigError(
            f"ingress.auth_tokens_env: token {bad[0]} of {variable} has"
            f" {len(tokens[bad[0]])} characters; tokens need {MIN_TOKEN_CHARS} to"
            f" {MAX_TOKEN_CHARS}"
        )
    return tokens


def effective_timeout(header: str | None, settings: Settings) -> float:
    """The request's timeout: the header's (bounded by the maximum) or the default; 400 if
    the header is not a positive number."""
    if header is None:
        return settings.request_timeout_s
    try:
        value = float(header)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise InvalidInput(
            f"header X-Request-Timeout-Seconds must be a positive number of seconds,"
            f" got '{header[:32]}'"
        )
    return min(value, settings.max_request_timeout_s)


def deadline_margin(timeout_s: float) -> float:
    """Answer a little before the deadline, so our 504 (with the protocol's body) reaches the
    client before Serve's proxy gives up on the same header with its own plain 408."""
    return min(0.5, max(0.05, 0.1 * timeout_s))


def check_auth(authorization: bytes | str | None, tokens: tuple[str, ...]) -> None:
    """Raise 401 unless ``authorization`` is ``Bearer <one of tokens>`` (no tokens: open).

    Tokens are compared as UTF-8 bytes. Pass the header's bytes as they arrived: HTTP header
    values are bytes (an ASGI server hands them over as such), and a non-ASCII token reaches
    us as its UTF-8 bytes. A ``str`` is taken as text and encoded as UTF-8 (gRPC metadata).
    """
    if not tokens:
        return
    if isinstance(authorization, str):
        try:
            authorization = authorization.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: no token is spelled so
            raise Unauthorized("invalid bearer token") from None
    scheme, _, given = (authorization or b"").partition(b" ")
    given = given.strip(b" \t")
    if scheme.lower() != b"bearer" or not given:
        raise Unauthorized("missing bearer token (header Authorization: Bearer <token>)")
    # Compare against every token, so the time taken does not tell which one nearly matched.
    matches = [hmac.compare_digest(given, token_bytes(t)) for t in tokens]
    if not any(matches):
        raise Unauthorized("invalid bearer token")


def token_bytes(token: str) -> bytes:
    """A configured token as the bytes a client sends: UTF-8. A token read from the
    environment that is not valid UTF-8 keeps its bytes (Python decoded it with
    surrogateescape)."""
    return token.encode("utf-8", "surrogateescape")


def header_bytes(value: str | None) -> bytes | None:
    """A header value of ``scope["serve_app.headers"]`` back as the bytes that arrived: the
    middleware decodes them as latin-1, which maps each byte to one character and back."""
    return None if value is None else value.encode("latin-1")


def is_open(path: str, root_path: str = "") -> bool:
    """Whether ``path`` is a health probe, which answers without a token. Only the probes
    themselves, below the application's prefix (``root_path``): a suffix is not enough, so
    no model route can ever end in one and go unguarded."""
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :]
    return path.rstrip("/") in OPEN_PATHS


def log_safe(text: str) -> str:
    """``text`` for one log line: control characters, backslashes and non-ASCII written as
    escapes. The path is percent-decoded (``%0A`` is a newline) and the request id is the
    client's header, so either could otherwise forge or split a line."""
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text  # the common path: nothing to escape
    return "".join(c if " " <= c <= "~" and c != "\\" else _escape(c) for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def serve_request_id() -> str:
    """Serve's own id of this request (the proxy accepts and returns ``X-Request-Id``)."""
    try:
        from ray import serve

        return serve.context._get_serve_request_context().request_id or "-"
    except Exception:
        return "-"
