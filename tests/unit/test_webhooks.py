"""Sending one signed webhook, over real HTTP to the test receiver on 127.0.0.1.

The receiver is on loopback, so most tests use a policy that allows exactly 127.0.0.1; the
default policy is exercised by the blocked-URL tests. No request leaves the machine.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import pytest
import standardwebhooks
from batchrelay.config.webhook_secrets import generate_webhook_secret
from batchrelay.producer import callbacks
from batchrelay.producer.callbacks import WebhookPolicy
from batchrelay.producer.errors import ConfigurationError
from batchrelay.worker import webhook_client
from batchrelay.worker.webhook_client import Target, WebhookClient
from batchrelay.worker.webhooks import (
    RESPONSE_PREFIX_BYTES,
    USER_AGENT,
    make_webhook_client,
    parse_retry_after,
    send_webhook,
    sign_webhook,
    verify_webhook,
)
from pydantic import SecretStr

from tests._receiver import WebhookReceiver, fails_first

LOCAL = WebhookPolicy(allow_hosts=("127.0.0.1",))
BODY = b'{"id":"req_1","status":"succeeded","result":{"text":"h\xc3\xa9llo"}}'
SECRET = generate_webhook_secret()


@pytest.fixture
def client() -> Iterator[WebhookClient]:
    with make_webhook_client() as c:
        yield c


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    callbacks.clear_resolution_cache()
    yield
    callbacks.clear_resolution_cache()


def send(client: WebhookClient, url: str, msg_id: str = "req_1", **kwargs) -> object:  # type: ignore[no-untyped-def]
    kwargs.setdefault("policy", LOCAL)
    return send_webhook(client, url, BODY, msg_id, [SECRET], **kwargs)


# -- signing ---------------------------------------------------------------------------------


def test_delivery_is_signed_and_verifies(
    client: WebhookClient, webhook_receiver: WebhookReceiver
) -> None:
    frozen = time.time()
    attempt = send_webhook(
        client, webhook_receiver.url + "/hook", BODY, "req_1", [SECRET], policy=LOCAL,
        now=lambda: frozen,
    )  # fmt: skip
    assert attempt.ok and attempt.status == 200 and attempt.error == ""
    assert attempt.retry_after is None and not attempt.final
    assert attempt.response_excerpt == "ok"
    [d] = webhook_receiver.received
    assert d.path == "/hook" and d.body == BODY
    assert d.headers["webhook-id"] == "req_1"
    assert d.headers["webhook-timestamp"] == str(int(frozen))
    assert d.headers["content-type"] == "application/json"
    assert d.headers["user-agent"] == USER_AGENT
    assert webhook_receiver.verify_all(SECRET) == 1
    assert verify_webhook(d.body, d.headers, SECRET)["result"] == {"text": "héllo"}

    # The signature is exactly Standard Webhooks v1, checked without the library.
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    signed = b"req_1." + str(int(frozen)).encode() + b"." + BODY
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert d.headers["webhook-signature"] == f"v1,{expected}"


def test_tampering_breaks_the_signature(
    client: WebhookClient, webhook_receiver: WebhookReceiver
) -> None:
    assert send(client, webhook_receiver.url).ok
    [d] = webhook_receiver.received
    verify_webhook(d.body, d.headers, SECRET)
    tampered = [
        (d.body.replace(b"succeeded", b"failed"), d.headers),
        (d.body, {**d.headers, "webhook-timestamp": str(int(d.headers["webhook-timestamp"]) + 1)}),
        (d.body, {**d.headers, "webhook-id": "req_2"}),
    ]
    for body, headers in tampered:
        with pytest.raises(standardwebhooks.WebhookVerificationError):
            verify_webhook(body, headers, SECRET)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        verify_webhook(d.body, d.headers, generate_webhook_secret())
    for bad in ("garbage", "v1,a,b", "v1,!!!"):
        with pytest.raises(standardwebhooks.WebhookVerificationError):
            verify_webhook(d.body, {**d.headers, "webhook-signature": bad}, SECRET)


def test_two_secrets_sign_twice_for_rotation(
    client: WebhookClient, webhook_receiver: WebhookReceiver
) -> None:
    old, new = generate_webhook_secret(), generate_webhook_secret(24)
    attempt = send_webhook(
        client, webhook_receiver.url, BODY, "req_rot", [old, SecretStr(new)], policy=LOCAL
    )
    assert attempt.ok
    [d] = webhook_receiver.received
    signatures = d.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    assert webhook_receiver.verify_all(old) == 1
    assert webhook_receiver.verify_all(new) == 1
    with pytest.raises(AssertionError, match="fail verification"):
        webhook_receiver.verify_all(generate_webhook_secret())


@pytest.mark.parametrize(
    ("secrets", "message"),
    [
        ([], "non-empty list of secrets"),
        ("whsec_" + base64.b64encode(b"k" * 32).decode(), "non-empty list of secrets"),
        (["c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"], "must start with 'whsec_'"),
        (["whsec_not*base64*at*all*hunter2hunter2"], "must be base64"),
        (["whsec_" + base64.b64encode(b"short").decode()], "24-64 bytes, got 5"),
    ],
)
def test_bad_secrets_are_refused_without_showing_them(secrets: object, message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        sign_webhook("req_1", 1_700_000_000, BODY, secrets)  # type: ignore[arg-type]
    assert message in str(info.value)
    assert "hunter2" not in str(info.value)


def test_misuse_raises(client: WebhookClient, webhook_receiver: WebhookReceiver) -> None:
    with pytest.raises(ValueError, match="UTF-8"):
        send_webhook(client, webhook_receiver.url, b"\xff\xfe", "req_1", [SECRET], policy=LOCAL)
    with pytest.raises(ValueError, match="msg_id"):
        send_webhook(client, webhook_receiver.url, BODY, "", [SECRET], policy=LOCAL)
    with pytest.raises(ValueError, match="msg_id"):
        send_webhook(client, webhook_receiver.url, BODY, "a\r\nb", [SECRET], policy=LOCAL)
    assert webhook_receiver.received == []


# -- outcomes --------------------------------------------------------------------------------


def test_server_error_is_retryable(
    client: WebhookClient, webhook_receiver: WebhookReceiver
) -> None:
    webhook_receiver.status_for = lambda _id: 500
    attempt = send(client, webhook_receiver.url)
    assert not attempt.ok and attempt.status == 500 and attempt.error == "HTTP 500"
    assert not attempt.final and attempt.retry_after is None
    assert SECRET not in repr(attempt)


def test_429_retry_after_seconds_and_http_date(
    client: WebhookClient, webhook_receiver: WebhookReceiver
) -> None:
    frozen = time.time()
    webhook_receiver.status_for = lambda _id: 429
    webhook_receiver.headers_for = lambda msg_id: {
        "Retry-After": "7" if msg_id == "a" else formatdate(frozen + 120, usegmt=True)
    }
    seconds = send(client, webhook_receiver.url, "a", now=lambda: frozen)
    dated = send(client, webhook_receiver.url, "b", now=lambda: frozen)
    assert seconds.status == 429 and seconds.error == "HTTP 429" and seconds.retry_after == 7.0
    assert dated.retry_after is not None and 119.0 <= dated.retry_after <= 120.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        (" 30 ", 30.0),
        ("0", 0.0),
        ("Thu, 01 Jan 2026 00:02:00 GMT", 120.0),
        ("Wed, 31 Dec 2025 23:00:00 GMT", 0.0),  # in the past: retry now
        ("-5", None),
        ("1.5", None),
        ("\u00b2", None),
        ("Mon, 99 Foo 99999 99:99:99 GMT", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=1767225600.0) == expected  # 2026-01-01T00:00:00Z


def test_410_means_gone(client: WebhookClient, webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.status_for = lambda _id: 410
    attempt = send(client, webhook_receiver.url)
    assert not attempt.ok and attempt.final and attempt.status == 410
    assert attempt.error == "HTTP 410"


def test_receiver_can_abort_retries(
    client: WebhookClient, webhook_receiver: WebhookReceiver
) -> None:
    webhook_receiver.status_for = lambda _id: 400
    webhook_receiver.headers_for = lambda _id: {"webhook-delivery": "abort-message"}
    attempt = send(client, webhook_receiver.url)
    assert not attempt.ok and attempt.final and attempt.status == 400
    assert attempt.error == "HTTP 400, receiver asked to stop (webhook-delivery: abort-message)"


def test_redirect_is_a_failure_and_not_followed(
    client: WebhookClient, webhook_receiver: WebhookReceiver
) -> None:
    with WebhookReceiver() as target:
        webhook_receiver.redirect_to = target.url + "/elsewhere"
        attempt = send(client, webhook_receiver.url + "/hook")
        assert not attempt.ok and attempt.status == 302
        assert attempt.error == "redirect 302 not followed"
        assert len(webhook_receiver.received) == 1
        assert target.received == []


def test_timeout(client: WebhookClient, webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.delay_s = 5.0
    attempt = send(client, webhook_receiver.url, timeout=0.3)
    assert not attempt.ok and attempt.status is None
    assert attempt.error == "timeout after 0.3s"
    assert 0.25 <= attempt.duration_s < 1.5


def test_connection_refused_while_down_then_delivered_after_up(
    client: WebhookClient, webhook_receiver: WebhookReceiver
) -> None:
    url = webhook_receiver.url + "/hook"
    assert send(client, url, "before").ok
    webhook_receiver.down()
    attempt = send(client, url, "during")
    assert not attempt.ok and attempt.status is None and attempt.error == "connection refused"
    webhook_receiver.up()
    assert webhook_receiver.url + "/hook" == url
    assert send(client, url, "after").ok
    assert [d.msg_id for d in webhook_receiver.received] == ["before", "after"]


def test_huge_response_is_not_read(
    client: WebhookClient, webhook_receiver: WebhookReceiver
) -> None:
    webhook_receiver.response_body = b"x" * (16 << 20)
    attempt = send(client, webhook_receiver.url)
    assert attempt.ok
    assert len(attempt.response_excerpt) == RESPONSE_PREFIX_BYTES
    assert attempt.duration_s < 2.0


# -- SSRF guard ------------------------------------------------------------------------------


def test_blocked_url_at_send_time(client: WebhookClient, webhook_receiver: WebhookReceiver) -> None:
    attempt = send(client, webhook_receiver.url + "/hook?token=s3cr3t", policy=WebhookPolicy())
    assert not attempt.ok and not attempt.final and attempt.status is None
    assert attempt.error.startswith("blocked: ") and "(loopback)" in attempt.error
    assert "s3cr3t" not in attempt.error
    for url in ("http://169.254.169.254/latest/meta-data/", "http://[::1]:1/", "ftp://x/"):
        assert send(client, url, policy=WebhookPolicy()).error.startswith("blocked: ")
    assert webhook_receiver.received == []


def test_port_past_65535_is_refused_at_send_time(
    client: WebhookClient, webhook_receiver: WebhookReceiver
) -> None:
    # A record stored before submit refused such ports must not wrap to the receiver's port.
    wrapped = webhook_receiver.port + 65536
    attempt = send(client, f"http://127.0.0.1:{wrapped}/hook")
    assert not attempt.ok and attempt.status is None
    assert attempt.error.startswith("blocked: ") and f"port {wrapped} is outside" in attempt.error
    assert webhook_receiver.received == []


def test_client_connects_only_to_the_addresses_it_is_given(
    client: WebhookClient, webhook_receiver: WebhookReceiver
) -> None:
    # The client never resolves a name: "localhost" is the receiver, 127.0.0.2 is not.
    target = Target(f"http://localhost:{webhook_receiver.port}/")
    with pytest.raises(ConnectionRefusedError):
        client.post(
            target, [ipaddress.ip_address("127.0.0.2")], {}, b"{}",
            deadline=time.monotonic() + 2, prefix_bytes=10,
        )  # fmt: skip
    with pytest.raises(ConnectionError, match="no address"):
        client.post(target, [], {}, b"{}", deadline=time.monotonic() + 2, prefix_bytes=10)
    assert webhook_receiver.received == []


def test_dns_rebinding_cannot_redirect_the_connection(
    client: WebhookClient, webhook_receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name first answers an allowed address, then the receiver's (forbidden) one.

    The connection must go to the address that was checked (127.0.0.2, where nothing
    listens), never to a fresh answer (127.0.0.1, where the receiver would record it).
    """
    answers = iter(["127.0.0.2", "127.0.0.1", "127.0.0.1"])
    asked: list[str] = []
    real = socket.getaddrinfo

    def rebinding(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host != "rebind.invalid":
            return real(host, port, *args, **kwargs)
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port or 0))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    policy = WebhookPolicy(allow_hosts=("127.0.0.2",))
    attempt = send(client, f"http://rebind.invalid:{webhook_receiver.port}/", policy=policy)
    assert not attempt.ok and attempt.error == "connection refused"
    assert asked == ["rebind.invalid"]
    assert webhook_receiver.received == []


def test_environment_proxies_are_ignored(
    webhook_receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with make_webhook_client() as c:
        assert send(c, webhook_receiver.url).ok
    assert len(webhook_receiver.received) == 1


# -- a deadline for the whole attempt ---------------------------------------------------------


class _RawServer:
    """A loopback TCP server that answers with a scripted byte drip (what http.server can't)."""

    def __init__(self, chunks: list[bytes], gap_s: float):
        self.chunks, self.gap_s = chunks, gap_s
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.recv(65536)
            for chunk in self.chunks:
                if self.stop.wait(self.gap_s):
                    return
                try:
                    conn.sendall(chunk)
                except OSError:
                    return
            self.stop.wait(5)  # then hold the connection open, silent

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(2)


def test_a_dripping_receiver_cannot_outlast_the_timeout(client: WebhookClient) -> None:
    # Each gap is shorter than the timeout, so only a total deadline stops this.
    drip = [b"HTTP/1.1 200 OK\r\n"] + [b"X-Slow: 1\r\n"] * 100
    server = _RawServer(drip, gap_s=0.05)
    try:
        attempt = send(client, f"http://127.0.0.1:{server.port}/", timeout=0.4)
    finally:
        server.close()
    assert attempt.error == "timeout after 0.4s"
    assert attempt.duration_s < 1.0


def test_a_stalled_body_after_2xx_headers_still_counts_as_delivered(
    client: WebhookClient,
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"
    server = _RawServer([head], gap_s=0.0)
    try:
        attempt = send(client, f"http://127.0.0.1:{server.port}/", timeout=0.3)
    finally:
        server.close()
    assert attempt.ok and attempt.status == 200 and attempt.response_excerpt == "partial"
    assert attempt.duration_s < 1.0


# -- keep-alive connections -------------------------------------------------------------------


class _KeepAliveServer:
    """A loopback HTTP/1.1 server that keeps connections open (tests/_receiver answers
    HTTP/1.0, one request per connection); records (connection number, webhook-id)."""

    def __init__(
        self,
        answer: bytes = b"HTTP/1.1 204 No Content\r\n\r\n",
        tls: ssl.SSLContext | None = None,
    ):
        self.answer, self.tls = answer, tls
        self.close_after_answer = False
        self.got: list[tuple[int, str]] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn, self.accepted), daemon=True).start()

    def _serve(self, conn: socket.socket, n: int) -> None:
        buf = b""
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):
                return
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                fields = dict(
                    line.decode().lower().split(": ", 1) for line in head.split(b"\r\n")[1:]
                )
                length = int(fields.get("content-length", "0"))
                while len(buf) < length:
                    buf += conn.recv(65536)
                buf = buf[length:]
                self.got.append((n, fields.get("webhook-id", "")))
                conn.sendall(self.answer)
                if self.close_after_answer:
                    return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def keepalive() -> Iterator[_KeepAliveServer]:
    server = _KeepAliveServer()
    yield server
    server.close()


def test_connections_are_reused_per_receiver(
    client: WebhookClient, keepalive: _KeepAliveServer
) -> None:
    url = f"http://127.0.0.1:{keepalive.port}/hook"
    assert all(send(client, url, f"req_{i}").ok for i in range(5))
    assert keepalive.got == [(1, f"req_{i}") for i in range(5)]


def test_a_reused_connection_is_checked_again_each_attempt(
    client: WebhookClient, keepalive: _KeepAliveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pooled connection to 127.0.0.1 is not used once the policy refuses that address,
    nor once the name resolves elsewhere: each attempt resolves and checks afresh."""
    url = f"http://127.0.0.1:{keepalive.port}/hook"
    assert send(client, url, "first").ok
    blocked = send(client, url, "second", policy=WebhookPolicy())
    assert blocked.error.startswith("blocked: ") and "(loopback)" in blocked.error

    answers = iter(["127.0.0.1", "127.0.0.2"])
    real = socket.getaddrinfo

    def moving(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host != "moving.invalid":
            return real(host, port, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port or 0))]

    monkeypatch.setattr(socket, "getaddrinfo", moving)
    policy = WebhookPolicy(allow_hosts=("127.0.0.1", "127.0.0.2"))
    moved = f"http://moving.invalid:{keepalive.port}/hook"
    assert send(client, moved, "third", policy=policy).ok
    attempt = send(client, moved, "fourth", policy=policy)
    assert not attempt.ok and attempt.error == "connection refused"
    assert [msg_id for _n, msg_id in keepalive.got] == ["first", "third"]


def test_an_idle_connection_the_receiver_closed_is_replaced(
    client: WebhookClient, keepalive: _KeepAliveServer
) -> None:
    keepalive.close_after_answer = True  # answers keep-alive, then hangs up
    url = f"http://127.0.0.1:{keepalive.port}/hook"
    assert send(client, url, "a").ok
    time.sleep(0.1)
    assert send(client, url, "b").ok
    assert keepalive.got == [(1, "a"), (2, "b")]


def test_idle_connections_expire(
    client: WebhookClient, keepalive: _KeepAliveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receiver not called for IDLE_S keeps no socket open: the sweep (at most once a
    second, when any connection is released) closes it, and the next delivery reconnects."""
    url = f"http://127.0.0.1:{keepalive.port}/hook"
    assert send(client, url, "a").ok
    monkeypatch.setattr(webhook_client, "IDLE_S", 0.0)
    other = _KeepAliveServer()
    try:
        time.sleep(1.1)
        assert send(client, f"http://127.0.0.1:{other.port}/hook", "x").ok
    finally:
        other.close()
    assert send(client, url, "b").ok
    assert keepalive.got == [(1, "a"), (2, "b")]


def test_a_redirect_over_keep_alive_is_not_followed(client: WebhookClient) -> None:
    answer = b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:9/\r\n"
    server = _KeepAliveServer(answer + b"Content-Length: 0\r\n\r\n")
    try:
        attempt = send(client, f"http://127.0.0.1:{server.port}/hook")
    finally:
        server.close()
    assert not attempt.ok and attempt.status == 307
    assert attempt.error == "redirect 307 not followed"
    assert server.got == [(1, "req_1")]


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (no CA any default trust store knows)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_https_is_verified_and_kept_alive(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    server = _KeepAliveServer(tls=server_tls)
    url = f"https://127.0.0.1:{server.port}/hook"
    try:
        with make_webhook_client() as untrusting:
            refused = send(untrusting, url, "untrusted")
        assert not refused.ok and refused.error.startswith("TLS error: ")
        trusting = ssl.create_default_context(cafile=str(cert))
        with make_webhook_client(verify=trusting) as c:
            assert send(c, url, "a").ok and send(c, url, "b").ok
    finally:
        server.close()
    assert [msg_id for _n, msg_id in server.got] == ["a", "b"]
    assert server.got[0][0] == server.got[1][0]  # one connection for both


# -- the receiver itself ---------------------------------------------------------------------


def test_receiver_fails_a_stable_fraction_of_first_attempts(
    client: WebhookClient, webhook_receiver: WebhookReceiver
) -> None:
    share = sum(fails_first(f"req_{i}", 0.3) for i in range(4000)) / 4000
    assert 0.27 < share < 0.33
    assert fails_first("req_7", 0.3) == fails_first("req_7", 0.3)

    webhook_receiver.fail_first_fraction = 1.0
    first = send(client, webhook_receiver.url, "req_x")
    second = send(client, webhook_receiver.url, "req_x")
    assert (first.status, second.status) == (500, 200)
    assert [d.status for d in webhook_receiver.by_id()["req_x"]] == [500, 200]
    assert webhook_receiver.ok_ids() == {"req_x"}


def test_receiver_wait_for_blocks_until_enough_ids(
    client: WebhookClient, webhook_receiver: WebhookReceiver
) -> None:
    assert not webhook_receiver.wait_for(1, timeout=0.05)

    def deliver() -> None:
        time.sleep(0.1)
        for i in range(5):
            send(client, webhook_receiver.url, f"req_{i % 3}")

    thread = threading.Thread(target=deliver)
    thread.start()
    assert webhook_receiver.wait_for(3, timeout=5)
    thread.join()
    assert not webhook_receiver.wait_for(4, timeout=0.05)
    assert sorted(webhook_receiver.by_id()) == ["req_0", "req_1", "req_2"]
    assert webhook_receiver.verify_all(SECRET) == 5
