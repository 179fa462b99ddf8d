"""Sending one signed webhook: Standard Webhooks headers, SSRF guard, a bounded attempt.

Plain functions, no Celery and no Redis, so the delivery task stays thin and this is testable
against a real HTTP receiver. `send_webhook` never raises for anything the network or the
receiver does; it returns a `DeliveryAttempt` and the caller decides about retries.

SSRF guard: the URL is re-checked with fresh DNS just before each attempt (the app's DNS may
have changed since submit), and the client connects only to the addresses that check
returned, or reuses a keep-alive connection only if it was opened to one of them; the name is
resolved once per attempt, so an answer that flips between check and connect (DNS
rebinding) cannot reach an internal address.
"""

from __future__ import annotations

import email.utils
import functools
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import standardwebhooks
from batchrelay.config.webhook_secrets import webhook_secret_key
from batchrelay.producer import errors
from batchrelay.producer.callbacks import (
    WebhookPolicy,
    check_webhook_url,
    resolve_webhook_host,
)
from batchrelay.worker.attempt import DeliveryAttempt
from batchrelay.worker.webhook_client import ProtocolError, Target, WebhookClient
from pydantic import SecretStr

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
        return _checked_signer(raw)
    except ValueError as exc:
        raise errors.ConfigurationError(f"webhook secret #{index + 1} {exc}") from None


@functools.lru_cache(maxsize=64)
def _checked_signer(raw: str) -> standardwebhooks.Webhook:
    """One signer per secret for the process (decoding it per attempt was a tenth of the
    attempt's CPU); a malformed secret raises every time, it is never cached."""
    return standardwebhooks.Webhook(webhook_secret_key(raw))


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


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP-date (relative to `now`)."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def send_webhook(
    client: WebhookClient,
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
    lookup of the check is bounded by the system resolver. The URL is checked with fresh DNS
    and the connection goes only to the addresses that check returned (a pooled one only if
    it was opened to one of them). Misuse (empty id, no secrets, malformed secret, non-UTF-8
    body) raises; nothing the network or the receiver does raises.
    """
    started = time.monotonic()
    headers = webhook_headers(msg_id, body, secrets, timestamp=int(now()))

    def failed(error: str) -> DeliveryAttempt:
        return DeliveryAttempt(ok=False, error=error, duration_s=time.monotonic() - started)

    try:
        target = _target(url, policy)
        addresses = resolve_webhook_host(target.host, policy, fresh=True)
    except errors.InvalidCallbackError as exc:
        return failed(f"blocked: {exc}")
    try:
        answer = client.post(
            target,
            addresses,
            headers,
            body,
            deadline=started + timeout,
            prefix_bytes=RESPONSE_PREFIX_BYTES,
        )
    except TimeoutError:
        return failed(f"timeout after {timeout:g}s")
    except OSError as exc:
        return failed(_describe_error(exc))

    status = answer.status
    excerpt = answer.excerpt.decode("utf-8", errors="replace")
    if 200 <= status < 300:
        return DeliveryAttempt(
            ok=True,
            status=status,
            duration_s=time.monotonic() - started,
            response_excerpt=excerpt,
        )
    error = f"redirect {status} not followed" if 300 <= status < 400 else f"HTTP {status}"
    # 410 Gone, or the receiver's abort header, ends the retries (Standard Webhooks).
    abort = answer.headers.get("webhook-delivery", "").strip().lower() == "abort-message"
    if abort:
        error += ", receiver asked to stop (webhook-delivery: abort-message)"
    return DeliveryAttempt(
        ok=False,
        error=error,
        final=status == 410 or abort,
        retry_after=parse_retry_after(answer.headers.get("retry-after"), now()),
        status=status,
        duration_s=time.monotonic() - started,
        response_excerpt=excerpt,
    )


@functools.lru_cache(maxsize=4096)
def _target(url: str, policy: WebhookPolicy) -> Target:
    """The URL's own checks (scheme, credentials, port, a literal address) and where it
    points: a pure function of the string and the policy, so kept per process; the DNS
    answer and every address it holds are checked afresh on each attempt. A refused URL
    raises every time (exceptions are never cached)."""
    check_webhook_url(url, policy, resolve=False)
    return Target(url)


def _describe_error(exc: OSError) -> str:
    """Short text for a transport failure; built from the error kind, never from the request."""
    text = str(exc)
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {text[:200]}"
    if isinstance(exc, ProtocolError):
        return f"protocol error: {text[:200]}"
    if isinstance(exc, ConnectionError):
        return f"connection lost: {text[:200] or type(exc).__name__}"
    return f"connection failed: {type(exc).__name__}"


def make_webhook_client(*, verify: ssl.SSLContext | bool = True) -> WebhookClient:
    """The client for webhook deliveries; share one per worker process (it keeps each
    receiver's keep-alive connections). See `worker.webhook_client` for what it promises:
    no redirects, no environment proxies or certificate settings, connections only to the
    addresses `send_webhook` has just checked."""
    return WebhookClient(verify=verify)
