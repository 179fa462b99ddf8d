"""Sending one signed webhook: Standard Webhooks headers, SSRF guard, a bounded attempt.

Plain coroutines, no Celery and no Redis, so the delivery task stays thin and this is testable
against a real HTTP receiver. `send_webhook` never raises for anything the network or the
receiver does; it returns a `DeliveryAttempt` and the caller decides about retries. The client
and its two-layer SSRF guard (a check before each attempt, connections pinned to the
addresses it accepted) are in `webhook_client.py`; signing is in `webhook_signing.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable

import aiohttp

from batchrelay.producer import errors
from batchrelay.worker.attempt import DeliveryAttempt
from batchrelay.worker.providers.http import parse_retry_after
from batchrelay.worker.webhook_client import WebhookClient
from batchrelay.worker.webhook_signing import (
    USER_AGENT,
    WebhookSecret,
    WebhookSigner,
    sign_webhook,
    verify_webhook,
)

# What is kept of a receiver's answer: enough for a dead-letter note, never a memory risk.
RESPONSE_PREFIX_BYTES = 1024

__all__ = [
    "RESPONSE_PREFIX_BYTES",
    "USER_AGENT",
    "WebhookClient",
    "WebhookSecret",
    "WebhookSigner",
    "parse_retry_after",
    "send_webhook",
    "sign_webhook",
    "verify_webhook",
]


async def send_webhook(
    client: WebhookClient,
    url: str,
    body: bytes,
    msg_id: str,
    signer: WebhookSigner,
    *,
    timeout: float = 15.0,
    now: Callable[[], float] = time.time,
) -> DeliveryAttempt:
    """POST `body` to `url`, signed with every secret; one attempt, never follows redirects.

    `timeout` bounds the whole attempt (the URL check's DNS lookup, connect, send, and the
    answer's headers), not each socket operation, so a receiver dripping bytes cannot hold a
    worker; reading the answer's body prefix gets what is left of it. Misuse (empty id,
    non-UTF-8 body) raises; nothing the network or the receiver does raises.
    """
    started = time.monotonic()
    headers = signer.headers(msg_id, body, timestamp=int(now()))

    def failed(error: str) -> DeliveryAttempt:
        return DeliveryAttempt(ok=False, error=error, duration_s=time.monotonic() - started)

    try:
        async with asyncio.timeout(timeout):
            try:
                target = await client.check(url)
            except errors.InvalidCallbackError as exc:
                return failed(f"blocked: {exc}")
            response = await client.session.post(
                target, data=body, headers=headers, allow_redirects=False
            )
    except TimeoutError:
        return failed(f"timeout after {timeout:g}s")
    except aiohttp.InvalidURL:
        return failed("blocked: webhook URL is not a valid URL")
    except aiohttp.ClientError as exc:
        return failed(_describe_error(exc))
    except OSError as exc:
        return failed(f"connection failed: {type(exc).__name__}")
    try:
        excerpt = await _read_prefix(response, started + timeout - time.monotonic())
    finally:
        response.release()

    status = response.status
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


async def _read_prefix(response: aiohttp.ClientResponse, left_s: float) -> str:
    """At most RESPONSE_PREFIX_BYTES of the answer, as text, within `left_s`; the rest is
    never read (an unread rest closes the connection instead of returning it to the pool).

    The status line and headers are the answer; a body that stalls or breaks off after them
    does not turn a 2xx into a failure (that would only cause a duplicate delivery).
    """
    buf = bytearray()
    if left_s <= 0 or response.content.at_eof():  # out of time, or a bodiless answer (204)
        return ""
    with contextlib.suppress(TimeoutError, aiohttp.ClientError):
        async with asyncio.timeout(left_s):
            while len(buf) < RESPONSE_PREFIX_BYTES:
                chunk = await response.content.read(RESPONSE_PREFIX_BYTES - len(buf))
                if not chunk:
                    break
                buf += chunk
    if not response.content.at_eof():
        response.close()
    return bytes(buf).decode("utf-8", errors="replace")


def _describe_error(exc: aiohttp.ClientError) -> str:
    """Short text for a transport failure, built from the error kind and the socket error,
    never from the request (whose URL may carry a token in its query)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        cause = exc.os_error
        text = str(cause)
        if text.startswith("blocked:"):
            return text[:300]
        if isinstance(cause, ConnectionRefusedError) or "refused" in text.lower():
            return "connection refused"
        if isinstance(exc, aiohttp.ClientSSLError) or isinstance(cause, ssl.SSLError):
            return f"TLS error: {text[:200]}"
        return f"connection failed: {text[:200] or type(cause).__name__}"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return f"connection lost: {type(exc).__name__}"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"protocol error: {str(exc.message)[:200]}"
    if isinstance(exc, aiohttp.ClientOSError):
        return f"connection lost: {exc.strerror or type(exc).__name__}"
    return type(exc).__name__
