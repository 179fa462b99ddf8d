"""The HTTP/1.1 client of webhook deliveries: keep-alive connections pinned to checked addresses.

Why not httpx here: profiled on a 2-core machine, one signed POST through httpx (with the
connect-time guard it needed) cost ~3 ms of a worker's CPU, a plain `http.client` POST ~0.3 ms;
webhook fan-out was bound by it. A delivery is one small POST whose answer is a status line,
a few headers and at most RESPONSE_PREFIX_BYTES of body, so this client does only that:

- it never resolves a name: the caller passes the addresses it has just checked, and a
  connection is opened to one of them or reused only if it was opened to one of them, so
  a pooled connection follows the receiver's current, re-checked DNS answer;
- one deadline bounds the whole attempt (connect, TLS, send, answer): every socket
  operation gets what is left of it, so a receiver dripping bytes cannot hold a worker;
- it never follows redirects, never reads proxy or certificate settings from the
  environment (certificates come from certifi, as with httpx), and never logs URLs;
- a connection goes back to the pool only after a complete HTTP/1.1 keep-alive answer
  whose body was read to its end within the prefix.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import certifi
import httpx
from batchrelay.producer.callbacks.addresses import IPAddress

# Past this many header bytes an answer is refused as malformed.
MAX_HEAD_BYTES = 64 * 1024
READ_BYTES = 64 * 1024
# An idle connection older than this is closed (the receiver's keep-alive is likely shorter).
IDLE_S = 30.0
DEFAULT_PORTS = {"http": 80, "https": 443}


class ProtocolError(OSError):
    """The receiver's answer is not HTTP/1.x as we can read it."""


class Target:
    """Where a webhook URL points: scheme, host, port, the request target and Host header."""

    __slots__ = ("host", "host_header", "path", "port", "scheme")

    def __init__(self, url: str):
        parsed = httpx.URL(url)  # the parser check_webhook_url used on the same string
        self.scheme = parsed.scheme.lower()
        self.host = parsed.raw_host.decode("ascii")
        self.port = parsed.port or DEFAULT_PORTS[self.scheme]
        self.path = parsed.raw_path
        shown = f"[{self.host}]" if ":" in self.host else self.host
        default = self.port == DEFAULT_PORTS[self.scheme]
        self.host_header = shown if default else f"{shown}:{self.port}"


@dataclass(frozen=True, slots=True)
class Answer:
    """What a delivery keeps of the receiver's answer."""

    status: int
    headers: Mapping[str, str]  # lower-cased names
    excerpt: bytes


class _Deadline:
    def __init__(self, at: float):
        self.at = at

    def left(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError("webhook attempt deadline passed")
        return left


@dataclass(slots=True)
class _Conn:
    sock: socket.socket
    ip: IPAddress
    idle_since: float = 0.0


class WebhookClient:
    """Idle keep-alive connections per (scheme, host, port), at most `max_idle` each; thread
    safe (a delivery task sends from several threads). Share one per worker process."""

    def __init__(self, *, verify: ssl.SSLContext | bool = True, max_idle: int = 16):
        if isinstance(verify, ssl.SSLContext):
            self._tls = verify
        else:
            self._tls = ssl.create_default_context(cafile=certifi.where())
            if not verify:
                self._tls.check_hostname = False
                self._tls.verify_mode = ssl.CERT_NONE
        self._max_idle = max_idle
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self._lock = threading.Lock()
        self._swept = time.monotonic()

    def post(
        self,
        target: Target,
        addresses: Iterable[IPAddress],
        headers: Mapping[str, str],
        body: bytes,
        *,
        deadline: float,
        prefix_bytes: int,
    ) -> Answer:
        """POST `body` to `target` over a connection to one of `addresses` (the ones just
        checked); raises TimeoutError, OSError (ssl.SSLError, ProtocolError included)."""
        clock = _Deadline(deadline)
        allowed = list(addresses)
        request = _request(target, headers, body)
        conn = self._reuse(target, allowed)
        if conn is not None:
            try:
                return self._exchange(target, conn, request, clock, prefix_bytes)
            except _Unanswered:
                pass  # the receiver had closed the idle connection: once more, on a new one
        conn = self._connect(target, allowed, clock)
        try:
            return self._exchange(target, conn, request, clock, prefix_bytes)
        except _Unanswered:
            raise ConnectionResetError("connection closed before an answer") from None

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                _close(conn.sock)

    def __enter__(self) -> WebhookClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connections --

    def _reuse(self, target: Target, allowed: list[IPAddress]) -> _Conn | None:
        """An idle connection to an address still allowed and still open; others are closed."""
        key = (target.scheme, target.host, target.port)
        stale: list[_Conn] = []
        found = None
        with self._lock:
            conns = self._idle.get(key, [])
            while conns and found is None:
                conn = conns.pop()
                if conn.ip in allowed and not _readable(conn.sock):
                    found = conn
                else:
                    stale.append(conn)
        for conn in stale:
            _close(conn.sock)
        return found

    def _release(self, target: Target, conn: _Conn) -> None:
        key = (target.scheme, target.host, target.port)
        conn.idle_since = now = time.monotonic()
        expired = self._expire(now) if now - self._swept > 1.0 else []
        with self._lock:
            conns = self._idle.setdefault(key, [])
            if len(conns) < self._max_idle:
                conns.append(conn)
            else:
                expired.append(conn)
        for old in expired:
            _close(old.sock)

    def _expire(self, now: float) -> list[_Conn]:
        """Take out connections idle past IDLE_S, so receivers seen once hold no sockets."""
        with self._lock:
            self._swept = now
            expired = [c for cs in self._idle.values() for c in cs if now - c.idle_since > IDLE_S]
            for key in list(self._idle):
                self._idle[key] = [c for c in self._idle[key] if now - c.idle_since <= IDLE_S]
                if not self._idle[key]:
                    del self._idle[key]
        return expired

    def _connect(self, target: Target, allowed: list[IPAddress], clock: _Deadline) -> _Conn:
        last: OSError | None = None
        for ip in allowed:
            try:
                sock = socket.create_connection((str(ip), target.port), timeout=clock.left())
            except TimeoutError:
                raise
            except OSError as exc:
                last = exc
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if target.scheme == "https":
                try:
                    sock.settimeout(clock.left())
                    # The certificate is checked against the URL's host, not the address.
                    sock = self._tls.wrap_socket(sock, server_hostname=target.host)
                except BaseException:
                    _close(sock)
                    raise
            return _Conn(sock, ip)
        if last is None:
            raise ConnectionError("no address to connect to")
        raise last

    # -- one exchange --

    def _exchange(
        self, target: Target, conn: _Conn, request: bytes, clock: _Deadline, prefix: int
    ) -> Answer:
        reader = _Reader(conn.sock, clock)
        try:
            conn.sock.settimeout(clock.left())
            try:
                conn.sock.sendall(request)
            except ConnectionError as exc:
                raise _Unanswered(str(exc)) from None
            status, version, headers = reader.head()
            excerpt, complete = reader.body(status, headers, prefix)
        except BaseException:
            _close(conn.sock)
            raise
        keep = complete and version == "HTTP/1.1" and "close" not in headers.get("connection", "")
        if keep:
            self._release(target, conn)
        else:
            _close(conn.sock)
        return Answer(status, headers, excerpt)


class _Unanswered(ConnectionError):
    """The connection closed before a single byte of an answer."""


class _Reader:
    """Reads one answer under the attempt's deadline."""

    def __init__(self, sock: socket.socket, clock: _Deadline):
        self.sock, self.clock = sock, clock
        self.buf = b""
        self.seen = False

    def _more(self) -> bytes:
        self.sock.settimeout(self.clock.left())
        try:
            data = self.sock.recv(READ_BYTES)
        except ConnectionError as exc:
            if self.seen:
                raise
            raise _Unanswered(str(exc)) from None
        if not data and not self.seen:
            raise _Unanswered("connection closed before an answer")
        self.seen = True
        return data

    def head(self) -> tuple[int, str, dict[str, str]]:
        while True:  # interim 1xx answers (100 Continue) precede the real one
            while (end := self.buf.find(b"\r\n\r\n")) < 0:
                if len(self.buf) > MAX_HEAD_BYTES:
                    raise ProtocolError("answer headers too long")
                data = self._more()
                if not data:
                    raise ProtocolError("connection closed inside the answer headers")
                self.buf += data
            raw, self.buf = self.buf[:end], self.buf[end + 4 :]
            status, version, headers = _parse_head(raw)
            if not 100 <= status < 200:
                return status, version, headers

    def body(self, status: int, headers: Mapping[str, str], prefix: int) -> tuple[bytes, bool]:
        """At most `prefix` bytes of the body and whether it was read to its end. A body
        that stalls or breaks off is cut where it stopped: the status is the answer."""
        if status in (204, 304):
            return b"", not self.buf  # bytes past a bodiless answer: not reusable
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = None if chunked else _content_length(headers)
        want = prefix if length is None else min(prefix, length)
        try:
            while len(self.buf) < want:
                data = self._more()
                if not data:
                    break
                self.buf += data
        except (TimeoutError, OSError):
            return (_dechunk(self.buf) if chunked else self.buf)[:prefix], False
        if chunked:
            return _dechunk(self.buf)[:prefix], False
        complete = length is not None and len(self.buf) == length
        return self.buf[:want], complete


def _parse_head(raw: bytes) -> tuple[int, str, dict[str, str]]:
    lines = raw.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:60]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise ProtocolError("malformed answer header")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return int(parts[1]), parts[0].decode("ascii"), headers


def _content_length(headers: Mapping[str, str]) -> int | None:
    value = headers.get("content-length")
    if value is None:
        return None
    if not value.isdigit():
        raise ProtocolError("malformed content-length")
    return int(value)


def _dechunk(data: bytes) -> bytes:
    """The payload of as many whole or partial chunks as `data` holds (for the excerpt)."""
    out = bytearray()
    while data:
        size_line, sep, rest = data.partition(b"\r\n")
        if not sep:
            break
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


def _request(target: Target, headers: Mapping[str, str], body: bytes) -> bytes:
    lines = [b"POST " + target.path + b" HTTP/1.1", b"host: " + target.host_header.encode()]
    lines += [f"{k}: {v}".encode() for k, v in headers.items()]
    lines.append(b"content-length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _readable(sock: socket.socket) -> bool:
    """An idle connection with something to read was closed (or spoken on) by the receiver."""
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
