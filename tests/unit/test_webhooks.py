"""Sending one signed webhook, over real HTTP to the test receiver on 127.0.0.1.

The receiver is on loopback, so most tests use a policy that allows exactly 127.0.0.1; the
default policy is exercised by the blocked-URL tests. No request leaves the machine. The
client is asyncio (one loop per worker process); `Hooks` runs it on a loop thread, as the
worker's engine does, and gives each policy its own client.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import socket
import threading
import time
from collections.abc import Coroutine, Iterator, Sequence
from email.utils import formatdate
from typing import Any, TypeVar

import aiohttp
import pytest
import standardwebhooks
from pydantic import SecretStr

from batchrelay.config.webhook_secrets import generate_webhook_secret
from batchrelay.producer import callbacks
from batchrelay.producer.callbacks import WebhookPolicy
from batchrelay.producer.errors import ConfigurationError
from batchrelay.worker.attempt import DeliveryAttempt
from batchrelay.worker.webhook_client import FRESH_DNS_TTL_S, WebhookClient
from batchrelay.worker.webhooks import (
    RESPONSE_PREFIX_BYTES,
    USER_AGENT,
    WebhookSecret,
    WebhookSigner,
    parse_retry_after,
    send_webhook,
    sign_webhook,
    verify_webhook,
)
from tests._receiver import WebhookReceiver, fails_first

LOCAL = WebhookPolicy(allow_hosts=("127.0.0.1",))
BODY = b'{"id":"req_1","status":"succeeded","result":{"text":"h\xc3\xa9llo"}}'
SECRET = generate_webhook_secret()


T = TypeVar("T")


class Hooks:
    """Webhook clients (one per policy) on a loop in its own thread, called synchronously."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.clients: dict[WebhookPolicy, WebhookClient] = {}

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def client(self, policy: WebhookPolicy = LOCAL) -> WebhookClient:
        if policy not in self.clients:
            self.clients[policy] = self.run(WebhookClient.open(policy))
        return self.clients[policy]

    def send(
        self,
        url: str,
        msg_id: str = "req_1",
        *,
        policy: WebhookPolicy = LOCAL,
        body: bytes = BODY,
        secrets: Sequence[WebhookSecret] = (SECRET,),
        **kwargs: Any,
    ) -> DeliveryAttempt:
        signer = WebhookSigner(list(secrets))
        return self.run(send_webhook(self.client(policy), url, body, msg_id, signer, **kwargs))

    def close(self) -> None:
        for c in self.clients.values():
            self.run(c.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    h = Hooks()
    yield h
    h.close()


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    callbacks.clear_resolution_cache()
    yield
    callbacks.clear_resolution_cache()


# -- signing ---------------------------------------------------------------------------------


def test_delivery_is_signed_and_verifies(hooks: Hooks, webhook_receiver: WebhookReceiver) -> None:
    frozen = time.time()
    attempt = hooks.send(webhook_receiver.url + "/hook", now=lambda: frozen)
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


def test_tampering_breaks_the_signature(hooks: Hooks, webhook_receiver: WebhookReceiver) -> None:
    assert hooks.send(webhook_receiver.url).ok
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
    hooks: Hooks, webhook_receiver: WebhookReceiver
) -> None:
    old, new = generate_webhook_secret(), generate_webhook_secret(24)
    attempt = hooks.send(webhook_receiver.url, "req_rot", secrets=[old, SecretStr(new)])
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


def test_misuse_raises(hooks: Hooks, webhook_receiver: WebhookReceiver) -> None:
    with pytest.raises(ValueError, match="UTF-8"):
        hooks.send(webhook_receiver.url, body=b"\xff\xfe")
    with pytest.raises(ValueError, match="msg_id"):
        hooks.send(webhook_receiver.url, "")
    with pytest.raises(ValueError, match="msg_id"):
        hooks.send(webhook_receiver.url, "a\r\nb")
    assert webhook_receiver.received == []


# -- outcomes --------------------------------------------------------------------------------


def test_server_error_is_retryable(hooks: Hooks, webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.status_for = lambda _id: 500
    attempt = hooks.send(webhook_receiver.url)
    assert not attempt.ok and attempt.status == 500 and attempt.error == "HTTP 500"
    assert not attempt.final and attempt.retry_after is None
    assert SECRET not in repr(attempt)


def test_429_retry_after_seconds_and_http_date(
    hooks: Hooks, webhook_receiver: WebhookReceiver
) -> None:
    frozen = time.time()
    webhook_receiver.status_for = lambda _id: 429
    webhook_receiver.headers_for = lambda msg_id: {
        "Retry-After": "7" if msg_id == "a" else formatdate(frozen + 120, usegmt=True)
    }
    seconds = hooks.send(webhook_receiver.url, "a", now=lambda: frozen)
    dated = hooks.send(webhook_receiver.url, "b", now=lambda: frozen)
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


def test_410_means_gone(hooks: Hooks, webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.status_for = lambda _id: 410
    attempt = hooks.send(webhook_receiver.url)
    assert not attempt.ok and attempt.final and attempt.status == 410
    assert attempt.error == "HTTP 410"


def test_receiver_can_abort_retries(hooks: Hooks, webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.status_for = lambda _id: 400
    webhook_receiver.headers_for = lambda _id: {"webhook-delivery": "abort-message"}
    attempt = hooks.send(webhook_receiver.url)
    assert not attempt.ok and attempt.final and attempt.status == 400
    assert attempt.error == "HTTP 400, receiver asked to stop (webhook-delivery: abort-message)"


def test_redirect_is_a_failure_and_not_followed(
    hooks: Hooks, webhook_receiver: WebhookReceiver
) -> None:
    with WebhookReceiver() as target:
        webhook_receiver.redirect_to = target.url + "/elsewhere"
        attempt = hooks.send(webhook_receiver.url + "/hook")
        assert not attempt.ok and attempt.status == 302
        assert attempt.error == "redirect 302 not followed"
        assert len(webhook_receiver.received) == 1
        assert target.received == []


def test_timeout(hooks: Hooks, webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.delay_s = 5.0
    attempt = hooks.send(webhook_receiver.url, timeout=0.3)
    assert not attempt.ok and attempt.status is None
    assert attempt.error == "timeout after 0.3s"
    assert 0.25 <= attempt.duration_s < 1.5


def test_connection_refused_while_down_then_delivered_after_up(
    hooks: Hooks, webhook_receiver: WebhookReceiver
) -> None:
    url = webhook_receiver.url + "/hook"
    assert hooks.send(url, "before").ok
    webhook_receiver.down()
    attempt = hooks.send(url, "during")
    assert not attempt.ok and attempt.status is None and attempt.error == "connection refused"
    webhook_receiver.up()
    assert webhook_receiver.url + "/hook" == url
    assert hooks.send(url, "after").ok
    assert [d.msg_id for d in webhook_receiver.received] == ["before", "after"]


def test_huge_response_is_not_read(hooks: Hooks, webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.response_body = b"x" * (16 << 20)
    attempt = hooks.send(webhook_receiver.url)
    assert attempt.ok
    assert len(attempt.response_excerpt) == RESPONSE_PREFIX_BYTES
    assert attempt.duration_s < 2.0


# -- SSRF guard ------------------------------------------------------------------------------


def test_blocked_url_at_send_time(hooks: Hooks, webhook_receiver: WebhookReceiver) -> None:
    attempt = hooks.send(webhook_receiver.url + "/hook?token=s3cr3t", policy=WebhookPolicy())
    assert not attempt.ok and not attempt.final and attempt.status is None
    assert attempt.error.startswith("blocked: ") and "(loopback)" in attempt.error
    assert "s3cr3t" not in attempt.error
    for url in ("http://169.254.169.254/latest/meta-data/", "http://[::1]:1/", "ftp://x/"):
        assert hooks.send(url, policy=WebhookPolicy()).error.startswith("blocked: ")
    assert webhook_receiver.received == []


def test_port_past_65535_is_refused_at_send_time(
    hooks: Hooks, webhook_receiver: WebhookReceiver
) -> None:
    # A record stored before submit refused such ports must not wrap to the receiver's port.
    wrapped = webhook_receiver.port + 65536
    attempt = hooks.send(f"http://127.0.0.1:{wrapped}/hook")
    assert not attempt.ok and attempt.status is None
    assert attempt.error.startswith("blocked: ") and f"port {wrapped} is outside" in attempt.error
    # The session itself cannot be led there either: yarl refuses the port outright.
    session = hooks.client().session
    with pytest.raises((aiohttp.InvalidURL, ValueError)):
        hooks.run(session.post(f"http://127.0.0.1:{wrapped}/", data=b"{}"))
    assert webhook_receiver.received == []


def test_client_checks_addresses_at_connect_time(
    hooks: Hooks, webhook_receiver: WebhookReceiver
) -> None:
    # Past the pre-attempt check, the connection layer refuses a named host on its own (its
    # resolver answers only checked addresses). An IP-literal host never reaches a resolver
    # in aiohttp: the pre-attempt check judges exactly that address (see
    # test_blocked_url_at_send_time), and the session is the client's own, used by nothing else.
    session = hooks.client(WebhookPolicy()).session
    with pytest.raises(aiohttp.ClientConnectorError) as info:
        hooks.run(session.post(f"http://localhost:{webhook_receiver.port}/", data=b"{}"))
    assert str(info.value.os_error).startswith("blocked: ") and "loopback" in str(
        info.value.os_error
    )
    assert webhook_receiver.received == []


def test_dns_rebinding_cannot_redirect_the_connection(
    hooks: Hooks, webhook_receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
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
    attempt = hooks.send(f"http://rebind.invalid:{webhook_receiver.port}/", policy=policy)
    assert not attempt.ok and attempt.error == "connection refused"
    assert asked == ["rebind.invalid"]
    assert webhook_receiver.received == []


def test_environment_proxies_are_ignored(
    hooks: Hooks, webhook_receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert hooks.send(webhook_receiver.url).ok
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


def test_a_dripping_receiver_cannot_outlast_the_timeout(hooks: Hooks) -> None:
    # Each gap is shorter than the timeout, so only a total deadline stops this.
    drip = [b"HTTP/1.1 200 OK\r\n"] + [b"X-Slow: 1\r\n"] * 100
    server = _RawServer(drip, gap_s=0.05)
    try:
        attempt = hooks.send(f"http://127.0.0.1:{server.port}/", timeout=0.4)
    finally:
        server.close()
    assert attempt.error == "timeout after 0.4s"
    assert attempt.duration_s < 1.0


def test_a_stalled_body_after_2xx_headers_still_counts_as_delivered(
    hooks: Hooks,
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"
    server = _RawServer([head], gap_s=0.0)
    try:
        attempt = hooks.send(f"http://127.0.0.1:{server.port}/", timeout=0.3)
    finally:
        server.close()
    assert attempt.ok and attempt.status == 200 and attempt.response_excerpt == "partial"
    assert attempt.duration_s < 1.0


# -- the receiver itself ---------------------------------------------------------------------


def test_receiver_fails_a_stable_fraction_of_first_attempts(
    hooks: Hooks, webhook_receiver: WebhookReceiver
) -> None:
    share = sum(fails_first(f"req_{i}", 0.3) for i in range(4000)) / 4000
    assert 0.27 < share < 0.33
    assert fails_first("req_7", 0.3) == fails_first("req_7", 0.3)

    webhook_receiver.fail_first_fraction = 1.0
    first = hooks.send(webhook_receiver.url, "req_x")
    second = hooks.send(webhook_receiver.url, "req_x")
    assert (first.status, second.status) == (500, 200)
    assert [d.status for d in webhook_receiver.by_id()["req_x"]] == [500, 200]
    assert webhook_receiver.ok_ids() == {"req_x"}


def test_receiver_wait_for_blocks_until_enough_ids(
    hooks: Hooks, webhook_receiver: WebhookReceiver
) -> None:
    assert not webhook_receiver.wait_for(1, timeout=0.05)

    def deliver() -> None:
        time.sleep(0.1)
        for i in range(5):
            hooks.send(webhook_receiver.url, f"req_{i % 3}")

    thread = threading.Thread(target=deliver)
    thread.start()
    assert webhook_receiver.wait_for(3, timeout=5)
    thread.join()
    assert not webhook_receiver.wait_for(4, timeout=0.05)
    assert sorted(webhook_receiver.by_id()) == ["req_0", "req_1", "req_2"]
    assert webhook_receiver.verify_all(SECRET) == 5


def test_each_attempt_checks_a_dns_answer_at_most_a_second_old(
    hooks: Hooks, webhook_receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attempts within FRESH_DNS_TTL_S share one lookup; a later attempt looks up again, and
    a new connection goes to the new answer's checked address."""
    answers = iter(["127.0.0.1", "127.0.0.1", "127.0.0.2"])
    asked: list[str] = []
    real = socket.getaddrinfo

    def counting(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host != "hooks.invalid":
            return real(host, port, *args, **kwargs)
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port or 0))]

    monkeypatch.setattr(socket, "getaddrinfo", counting)
    policy = WebhookPolicy(allow_hosts=("127.0.0.1", "127.0.0.2"))
    url = f"http://hooks.invalid:{webhook_receiver.port}/"
    assert hooks.send(url, "a", policy=policy).ok
    assert hooks.send(url, "b", policy=policy).ok
    assert asked == ["hooks.invalid"]
    time.sleep(FRESH_DNS_TTL_S + 0.1)
    assert hooks.send(url, "c", policy=policy).ok
    assert asked == ["hooks.invalid"] * 2
    hooks.run(hooks.clients.pop(policy).close())  # the next attempt needs a new connection
    time.sleep(FRESH_DNS_TTL_S + 0.1)
    attempt = hooks.send(url, "d", policy=policy)  # ...a new one goes to the new answer
    assert asked == ["hooks.invalid"] * 3
    assert not attempt.ok and attempt.error == "connection refused"
    assert [d.msg_id for d in webhook_receiver.received] == ["a", "b", "c"]


def test_the_signature_verifies_with_standardwebhooks_for_each_secret() -> None:
    """The HMAC is computed directly (keys decoded once); the reference library accepts it."""
    import standardwebhooks as sw

    old, new = generate_webhook_secret(), generate_webhook_secret(64)
    signer = WebhookSigner([old, SecretStr(new)])
    stamp = int(time.time())
    headers = signer.headers("req_9", BODY, timestamp=stamp)
    for secret in (old, new):
        assert sw.Webhook(secret).verify(BODY, headers)["id"] == "req_1"
    assert headers["webhook-signature"] == sign_webhook("req_9", stamp, BODY, [old, new])


def test_one_keep_alive_connection_serves_many_deliveries(hooks: Hooks) -> None:
    """The client keeps connections open between attempts (the worker keeps its client for
    the process, so across tasks too), against an HTTP/1.1 receiver that allows it."""
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def start() -> asyncio.Server:
        return await asyncio.start_server(serve, "127.0.0.1", 0)

    server = hooks.run(start())
    port = server.sockets[0].getsockname()[1]
    try:
        for i in range(5):
            assert hooks.send(f"http://127.0.0.1:{port}/hook", f"req_{i}").status == 204
    finally:
        server.close()
    assert len(connections) == 1
