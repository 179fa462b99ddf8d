"""Sending one signed webhook: Standard Webhooks headers, SSRF guard, a bounded attempt.

Plain functions, no Celery and no Redis, so the delivery task stays thin and this is testable
against a real HTTP receiver. `send_webhook` never raises for anything the network or the
receiver does; it returns a `DeliveryAttempt` and the caller decides about retries.

SSRF guard in two layers. The URL is re-checked with fresh DNS just before each attempt (the
app's DNS may have changed since submit), and the client made by `make_webhook_client`
checks again at connect time and connects only to the addresses it checked, so a DNS answer
that flips between the check and the connect (DNS rebinding) cannot reach an internal address.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpcore
import httpx
import standardwebhooks
from pydantic import SecretStr

from batchrelay.config.webhook_secrets import webhook_secret_key
from batchrelay.producer import errors
from batchrelay.producer.callbacks import (
    WebhookPolicy,
    check_webhook_port,
    check_webhook_url,
    resolve_webhook_host,
)
from batchrelay.worker.attempt import DeliveryAttempt
from batchrelay.worker.providers.http import parse_retry_after

USER_AGENT = "batchrelay-webhooks/1"
# What is kept of a receiver's answer: enough for a dead-letter note, never a memory risk.
RESPONSE_PREFIX_BYTES = 1024

WebhookSecret = str | SecretStr


# -- signing --------------------------------------------------------------------------------


def _signer(secret: WebhookSecret, index: int) -> standardwebhooks.Webhook:
    """A standardwebhooks signer, after checking the secret's format (the message never shows
    it): the library would sign with a leniently decoded, wrong key."""
    raw = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    try:
        return standardwebhooks.Webhook(webhook_secret_key(raw))
    except ValueError as exc:
        raise errors.ConfigurationError(f"webhook secret #{index + 1} {exc}") from None


def sign_webhook(msg_id: str, timestamp: int, body: bytes, secrets: Sequence[WebhookSecret]) -> str:
    """The `webhook-signature` value: one `v1,<base64>` per secret, space-separated.

    Several secrets at once is how keys rotate: receivers holding either the old or the new
    secret find a matching signature.
    """
    if isinstance(secrets, str | SecretStr) or not secrets:
        raise errors.ConfigurationError(
            "webhook signing needs a non-empty list of secrets (BATCHRELAY_WEBHOOK_SECRETS)"
        )
    text = _body_text(body)
    when = datetime.fromtimestamp(timestamp, tz=UTC)
    return " ".join(
        _signer(s, i).sign(msg_id=msg_id, timestamp=when, data=text) for i, s in enumerate(secrets)
    )


def webhook_headers(
    msg_id: str, body: bytes, secrets: Sequence[WebhookSecret], *, timestamp: int
) -> dict[str, str]:
    """Every header of a delivery; the signature covers exactly `body` as sent."""
    if not isinstance(msg_id, str) or not msg_id or any(ord(c) <= 0x20 for c in msg_id):
        raise ValueError("msg_id must be a non-empty string without whitespace")
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign_webhook(msg_id, timestamp, body, secrets),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        # Raw bytes only: a compressed answer could inflate far beyond the prefix we read.
        "accept-encoding": "identity",
    }


def _body_text(body: bytes) -> str:
    # standardwebhooks signs text; it re-encodes it as UTF-8, which gives back these bytes.
    if not isinstance(body, bytes | bytearray):
        raise TypeError(f"body must be bytes, not {type(body).__name__}")
    try:
        return bytes(body).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("webhook body must be UTF-8 (JSON)") from None


def verify_webhook(body: bytes, headers: Mapping[str, str], secret: str) -> dict[str, Any]:
    """Verify a delivery and return its JSON payload; raise WebhookVerificationError otherwise.

    For our tests and receivers written in Python. A web app should verify with the
    `standardwebhooks` package (or any Standard Webhooks library) directly, dedupe on
    `webhook-id`, and never depend on batchrelay's worker code. Unlike the bare library call,
    malformed headers or a non-UTF-8 body also raise WebhookVerificationError.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        payload = standardwebhooks.Webhook(secret).verify(bytes(body), lowered)
    except (ValueError, TypeError) as exc:
        raise standardwebhooks.WebhookVerificationError(
            f"malformed webhook ({type(exc).__name__})"
        ) from None
    if not isinstance(payload, dict):
        raise standardwebhooks.WebhookVerificationError("payload is not a JSON object")
    return payload


# -- the attempt ----------------------------------------------------------------------------


def send_webhook(
    client: httpx.Client,
    url: str,
    body: bytes,
    msg_id: str,
    secrets: Sequence[WebhookSecret],
    *,
    policy: WebhookPolicy,
    timeout: float = 15.0,
    now: Callable[[], float] = time.time,
) -> DeliveryAttempt:
    """POST `body` to `url`, signed with every secret; one attempt, never follows redirects.

    `timeout` bounds the whole attempt (connect, send, headers and the body prefix we read),
    not each socket operation, so a receiver dripping bytes cannot hold a worker; the DNS
    lookup of the pre-send check is bounded by the system resolver. That bound and the
    connect-time address check need a client from `make_webhook_client`. Misuse
    (empty id, no secrets, malformed secret, non-UTF-8 body) raises; nothing the network or the
    receiver does raises.
    """
    started = time.monotonic()
    headers = webhook_headers(msg_id, body, secrets, timestamp=int(now()))

    def failed(error: str) -> DeliveryAttempt:
        return DeliveryAttempt(ok=False, error=error, duration_s=time.monotonic() - started)

    try:
        check_webhook_url(url, policy, resolve=True, resolve_fresh=True)
    except errors.InvalidCallbackError as exc:
        return failed(f"blocked: {exc}")
    try:
        with _attempt_scope(policy, started + timeout):
            request = client.build_request(
                "POST", url, content=body, headers=headers, timeout=httpx.Timeout(timeout)
            )
            response = client.send(request, stream=True, follow_redirects=False)
            try:
                excerpt = _read_prefix(response)
            finally:
                response.close()
    except httpx.TimeoutException:
        return failed(f"timeout after {timeout:g}s")
    except httpx.InvalidURL:
        return failed("blocked: webhook URL is not a valid URL")
    except httpx.HTTPError as exc:
        return failed(_describe_error(exc))
    except OSError as exc:
        return failed(f"connection failed: {type(exc).__name__}")

    status = response.status_code
    if 200 <= status < 300:
        return DeliveryAttempt(
            ok=True,
            status=status,
            duration_s=time.monotonic() - started,
            response_excerpt=excerpt,
        )
    error = f"redirect {status} not followed" if 300 <= status < 400 else f"HTTP {status}"
    # 410 Gone, or the receiver's abort header, ends the retries (Standard Webhooks).
    abort = response.headers.get("webhook-delivery", "").strip().lower() == "abort-message"
    if abort:
        error += ", receiver asked to stop (webhook-delivery: abort-message)"
    return DeliveryAttempt(
        ok=False,
        error=error,
        final=status == 410 or abort,
        retry_after=parse_retry_after(response.headers.get("retry-after"), now()),
        status=status,
        duration_s=time.monotonic() - started,
        response_excerpt=excerpt,
    )


def _read_prefix(response: httpx.Response) -> str:
    """At most RESPONSE_PREFIX_BYTES of the answer, as text; the rest is never read.

    The status line and headers are the answer; a body that stalls or breaks off after them
    does not turn a 2xx into a failure (that would only cause a duplicate delivery).
    """
    buf = bytearray()
    with contextlib.suppress(httpx.HTTPError):
        # Unchunked: yields what each socket read returned (at most 64 KiB), so bytes that
        # arrived before a stall are kept.
        for chunk in response.iter_raw():
            buf += chunk
            if len(buf) >= RESPONSE_PREFIX_BYTES:
                break
    return bytes(buf[:RESPONSE_PREFIX_BYTES]).decode("utf-8", errors="replace")


def _describe_error(exc: httpx.HTTPError) -> str:
    """Short text for a transport failure; built from the error kind, never from the request."""
    text = str(exc)
    if text.startswith("blocked:"):
        return text[:300]
    if isinstance(exc, httpx.ConnectError):
        if _caused_by(exc, ConnectionRefusedError) or "refused" in text.lower():
            return "connection refused"
        if _caused_by(exc, ssl.SSLError) or "SSL" in text:
            return f"TLS error: {text[:200]}"
        return f"connection failed: {text[:200]}"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"protocol error: {text[:200]}"
    if isinstance(exc, httpx.ReadError | httpx.WriteError):
        return f"connection lost: {text[:200] or type(exc).__name__}"
    return f"{type(exc).__name__}: {text[:200]}"


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# -- the client and its connect-time guard ----------------------------------------------------

# The policy and deadline of the send_webhook call running in this thread/context; the guarded
# transport reads them because httpcore's connect hook has no per-request arguments.
_policy: contextvars.ContextVar[WebhookPolicy | None] = contextvars.ContextVar(
    "batchrelay_webhook_policy", default=None
)
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "batchrelay_webhook_deadline", default=None
)
_STRICT = WebhookPolicy()


@contextlib.contextmanager
def _attempt_scope(policy: WebhookPolicy, deadline: float) -> Iterator[None]:
    tokens = (_policy.set(policy), _deadline.set(deadline))
    try:
        yield
    finally:
        _policy.reset(tokens[0])
        _deadline.reset(tokens[1])


def _remaining(timeout: float | None, kind: type[Exception]) -> float | None:
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise kind("webhook attempt deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """Clamps every socket operation to what is left of the attempt's total time."""

    def __init__(self, inner: httpcore.NetworkStream):
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _remaining(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _remaining(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(
            ssl_context, server_hostname, _remaining(timeout, httpcore.ConnectTimeout)
        )
        return _DeadlineStream(inner)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _GuardedBackend(httpcore.NetworkBackend):
    """Resolves and checks the host itself, then connects to a checked address only.

    TLS still verifies the certificate against the host name: httpcore passes the URL's host
    as server_hostname, whatever address we connected to.
    """

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        policy = _policy.get() or _STRICT
        try:
            check_webhook_port(port)
            addresses = resolve_webhook_host(host, policy)
        except errors.InvalidCallbackError as exc:
            raise httpcore.ConnectError(f"blocked: {exc}") from None
        last: Exception | None = None
        for ip in addresses:
            try:
                stream = self._inner.connect_tcp(
                    str(ip),
                    port,
                    timeout=_remaining(timeout, httpcore.ConnectTimeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
                continue
            return _DeadlineStream(stream)
        assert last is not None
        raise last

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("blocked: webhooks are never sent over unix sockets")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _GuardedTransport(httpx.HTTPTransport):
    """httpx's own transport (request mapping, error mapping) over the guarded backend.

    httpx exposes no network-backend option, so the pool is swapped after construction; the
    check below fails loudly at start-up if a future httpx stops using `_pool`.
    """

    def __init__(self, *, limits: httpx.Limits, verify: ssl.SSLContext | bool):
        super().__init__(limits=limits, verify=verify, trust_env=False)
        if not isinstance(getattr(self, "_pool", None), httpcore.ConnectionPool):
            raise RuntimeError("httpx.HTTPTransport internals changed; update _GuardedTransport")
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_GuardedBackend(),
        )


class _PathOnlyURLs(logging.Filter):
    """Cuts httpx's per-request log line ("HTTP Request: POST <url> ...", INFO) to scheme, host
    and path while a webhook attempt runs: a callback URL's query may carry the receiver's
    token, and INFO is the level the workers run at."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _policy.get() is not None and isinstance(record.args, tuple):
            record.args = tuple(
                a.copy_with(query=None, fragment=None) if isinstance(a, httpx.URL) else a
                for a in record.args
            )
        return True


_URL_FILTER = _PathOnlyURLs()


def make_webhook_client(
    *,
    proxy: str | None = None,
    max_connections: int = 100,
    verify: ssl.SSLContext | bool = True,
) -> httpx.Client:
    """The httpx client for webhook deliveries; share one per worker process.

    - Redirects are never followed (a 3xx is a failed attempt, per Standard Webhooks).
    - `trust_env=False`: HTTP(S)_PROXY/NO_PROXY and SSL_CERT_* in the environment are ignored.
      Proxy variables set for the provider APIs must not silently route (or fail to route)
      webhooks, and a proxy would defeat the connect-time address check. To send through an
      egress proxy (e.g. stripe/smokescreen, which filters internal IPs itself) pass `proxy`;
      the pre-send URL check still applies, the connect-time check is then the proxy's job.
    - Used outside `send_webhook`, the connect-time guard applies the strict default policy.
    - httpx's request log line shows a webhook's URL without its query (`_PathOnlyURLs`).
    """
    logging.getLogger("httpx").addFilter(_URL_FILTER)  # a no-op when already added
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=min(20, max_connections),
        keepalive_expiry=30.0,
    )
    transport: httpx.BaseTransport
    if proxy is None:
        transport = _GuardedTransport(limits=limits, verify=verify)
    else:
        transport = httpx.HTTPTransport(proxy=proxy, limits=limits, verify=verify, trust_env=False)
    return httpx.Client(
        transport=transport,
        follow_redirects=False,
        trust_env=False,
        timeout=httpx.Timeout(15.0),
        headers={"user-agent": USER_AGENT},
    )
