"""Requests sent byte for byte: no client normalises the path or re-encodes a header.

``requests`` and ``aiohttp`` rewrite what a hostile client would send as is (they quote a
non-ASCII path, refuse or encode header values their own way, drop ``..``). These helpers
write the request line, headers and body as given, over a plain socket, and return what
was sent with the answer, so a test can check that its input reached the server.
"""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes
    sent: bytes  # the request's bytes, exactly

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def send(
    base: str,
    method: str,
    target: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
    timeout_s: float = 60,
) -> Answer:
    """One HTTP/1.1 request with ``target`` (path and query) and ``headers`` as given."""
    url = urlparse(base)
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: " + url.netloc.encode()]
    lines += [name + b": " + value for name, value in headers or []]
    lines += [b"Content-Length: " + str(len(body)).encode(), b"Connection: close"]
    sent = b"\r\n".join(lines) + b"\r\n\r\n" + body
    with socket.create_connection((url.hostname, url.port), timeout=timeout_s) as sock:
        sock.sendall(sent)
        response = http.client.HTTPResponse(sock, method=method)  # HEAD: no body to read
        response.begin()
        answer = response.read()
        headers_seen = {name.lower(): value for name, value in response.getheaders()}
        return Answer(response.status, headers_seen, answer, sent)


def post_json(base: str, path: str, document: Any, headers: dict[str, str] | None = None):
    """POST a JSON document (NaN allowed) to ``path`` as written."""
    body = json.dumps(document, allow_nan=True).encode()
    more = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    return send(base, "POST", path.encode(), [(b"Content-Type", b"application/json"), *more], body)
