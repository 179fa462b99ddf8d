"""A real HTTP webhook receiver for tests: records every delivery, misbehaves on demand.

    with WebhookReceiver(fail_first_fraction=0.3) as rx:
        ...deliver to rx.url + "/hook"...
        assert rx.wait_for(100, timeout=30)
        rx.verify_all(secret)

or the `webhook_receiver` fixture (import it into a conftest). It listens on 127.0.0.1 only,
on a free port that it keeps across `down()` / `up()`, so a test can take the receiver away
and bring it back at the same URL. Responses use HTTP/1.0 (one request per connection), so
`down()` really means down: no pooled keep-alive connection can reach it meanwhile.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import standardwebhooks


@dataclass(frozen=True)
class Delivery:
    """One request as received, and the status the receiver chose to answer."""

    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    at: float  # time.time() on arrival
    status: int

    @property
    def msg_id(self) -> str:
        return self.headers.get("webhook-id", "")


def fails_first(msg_id: str, fraction: float) -> bool:
    """Whether the first attempt for `msg_id` gets a 500: a stable hash, not randomness, so a
    failing test reproduces with the same ids."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(msg_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    server: _Server

    def do_POST(self) -> None:
        self.server.receiver._handle(self)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # A real server's listen backlog: socketserver's default of 5 drops the SYNs of a wave of
    # new connections (one per request here), and each dropped one costs a 1 s retransmit.
    request_queue_size = 128
    receiver: WebhookReceiver

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that timed out or hung up mid-answer is normal in these tests.
        pass


class WebhookReceiver:
    """Thread-safe recorder with programmable answers; see the module docstring.

    Behaviour knobs (plain attributes, read per request, may be changed at any time):
    `fail_first_fraction` (500 to that share of first attempts per webhook-id),
    `status_for(id) -> int | None` (override the status), `headers_for(id) -> mapping | None`
    (extra response headers, e.g. Retry-After), `redirect_to` (answer 302 to that URL),
    `delay_s` (wait before answering), `response_body`.
    """

    def __init__(
        self,
        *,
        fail_first_fraction: float = 0.0,
        status_for: Callable[[str], int | None] | None = None,
        headers_for: Callable[[str], Mapping[str, str] | None] | None = None,
        redirect_to: str | None = None,
        delay_s: float = 0.0,
        response_body: bytes = b"ok",
    ):
        self.fail_first_fraction = fail_first_fraction
        self.status_for = status_for
        self.headers_for = headers_for
        self.redirect_to = redirect_to
        self.delay_s = delay_s
        self.response_body = response_body
        self._cond = threading.Condition()
        self._received: list[Delivery] = []
        self._seen: set[str] = set()
        self._ok_ids: set[str] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._open: set[socket.socket] = set()
        self._wake = threading.Event()  # set on down()/close(): delayed answers are dropped
        self.port = 0

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> WebhookReceiver:
        self.up()
        return self

    def up(self) -> None:
        """Listen (again, on the same port after `down()`)."""
        if self._server is not None:
            return
        deadline = time.monotonic() + 5
        while True:
            try:
                server = _Server(("127.0.0.1", self.port), _Handler)
                break
            except OSError:
                if self.port == 0 or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        server.receiver = self
        self.port = server.server_address[1]
        self._wake = threading.Event()
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def down(self) -> None:
        """Stop listening and cut every open connection: clients now get 'connection refused'."""
        server, self._server = self._server, None
        if server is None:
            return
        self._wake.set()
        server.shutdown()
        server.server_close()
        with self._cond:
            conns = list(self._open)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def close(self) -> None:
        self.down()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what was received ----------------------------------------------------------------

    @property
    def received(self) -> list[Delivery]:
        with self._cond:
            return list(self._received)

    def by_id(self) -> dict[str, list[Delivery]]:
        out: dict[str, list[Delivery]] = {}
        for d in self.received:
            out.setdefault(d.msg_id, []).append(d)
        return out

    def ok_ids(self) -> set[str]:
        """Ids that got a 2xx answer at least once."""
        with self._cond:
            return set(self._ok_ids)

    def wait_for(self, n_unique_ids: int, timeout: float = 10.0, *, ok_only: bool = True) -> bool:
        """Block until `n_unique_ids` distinct webhook-ids arrived (answered 2xx unless
        `ok_only=False`); False on timeout."""

        def count() -> int:
            return len(self._ok_ids) if ok_only else len(self._seen)

        with self._cond:
            return self._cond.wait_for(lambda: count() >= n_unique_ids, timeout)

    def verify_all(self, secret: str) -> int:
        """Assert every delivery verifies with `secret` (standardwebhooks); return the count."""
        bad = []
        deliveries = self.received
        for d in deliveries:
            try:
                standardwebhooks.Webhook(secret).verify(d.body, d.headers)
            except Exception as exc:
                bad.append(f"{d.msg_id or '(no id)'}: {type(exc).__name__}: {exc}")
        assert not bad, f"{len(bad)} of {len(deliveries)} deliveries fail verification: {bad[:5]}"
        return len(deliveries)

    def clear(self) -> None:
        with self._cond:
            self._received.clear()
            self._seen.clear()
            self._ok_ids.clear()

    # -- answering ----------------------------------------------------------------------------

    def _decide(self, msg_id: str, first: bool) -> tuple[int, dict[str, str]]:
        headers: dict[str, str] = {}
        extra = self.headers_for(msg_id) if self.headers_for else None
        if extra:
            headers.update(extra)
        status = self.status_for(msg_id) if self.status_for else None
        if status is not None:
            return status, headers
        if self.redirect_to:
            headers["Location"] = self.redirect_to
            return 302, headers
        if first and fails_first(msg_id, self.fail_first_fraction):
            return 500, headers
        return 200, headers

    def _handle(self, handler: _Handler) -> None:
        conn = handler.connection
        wake = self._wake
        with self._cond:
            self._open.add(conn)
        try:
            length = int(handler.headers.get("Content-Length") or 0)
            body = handler.rfile.read(length) if length else b""
            if len(body) < length:
                return  # cut off mid-body (the receiver went down): nothing was received
            headers = {k.lower(): v for k, v in handler.headers.items()}
            msg_id = headers.get("webhook-id", "")
            with self._cond:
                first = msg_id not in self._seen
                status, extra = self._decide(msg_id, first)
                self._received.append(Delivery(handler.path, headers, body, time.time(), status))
                self._seen.add(msg_id)
                if 200 <= status < 300:
                    self._ok_ids.add(msg_id)
                self._cond.notify_all()
            if self.delay_s > 0 and wake.wait(self.delay_s):
                return  # went down while waiting: hang up without an answer
            payload = self.response_body
            handler.send_response(status)
            for name, value in extra.items():
                handler.send_header(name, value)
            handler.send_header("Content-Type", "text/plain")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except OSError:
            pass  # the client gave up (timeout) or the receiver went down
        finally:
            with self._cond:
                self._open.discard(conn)


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A running receiver on 127.0.0.1, closed after the test."""
    with WebhookReceiver() as receiver:
        yield receiver
