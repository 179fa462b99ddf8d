"""HTTP calls to a provider with backoff on 429 and 5xx, honouring Retry-After.

A call that may have taken effect (a create answered 5xx, a read timeout) is retried only
when the caller says it is safe (`idempotent=True`); otherwise the error goes up so the
caller can reconcile first.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC
from typing import Any

import httpx

from batchrelay import metrics_store
from batchrelay.config import ProviderProfile
from batchrelay.worker.providers.base import ProviderError

log = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 60.0
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0


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


def auth_headers(profile: ProviderProfile) -> dict[str, str]:
    """The API key in the header style the profile's provider expects."""
    key = profile.api_key.get_secret_value()
    if profile.auth_style == "bearer":
        return {"Authorization": f"Bearer {key}"}
    return {profile.auth_style: key}


def client(
    profile: ProviderProfile,
    timeout_s: float,
    *,
    base_url: str | None = None,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> httpx.Client:
    """An HTTP client for one profile; redirects are not followed (they could carry the key
    to another host). Every answer is counted for the metrics (`metrics_store`)."""
    return httpx.Client(
        base_url=base_url or profile.base_url,
        headers={**auth_headers(profile), **(headers or {})},
        params=params,
        timeout=httpx.Timeout(timeout_s, connect=10.0),
        follow_redirects=False,
        event_hooks={"response": [metrics_store.provider_hook(profile.name)]},
    )


def retry_after_s(response: httpx.Response) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (delta seconds or HTTP date)."""
    ms = response.headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return parse_retry_after(value, time.time())  # an HTTP date; None if unreadable


def backoff_s(attempt: int) -> float:
    """Full-jitter exponential backoff."""
    return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))


def retry_delay_s(hint: float | None, attempt: int) -> float:
    """The provider's Retry-After when it gave one (capped), else our backoff."""
    return min(MAX_RETRY_AFTER_S, hint) if hint is not None else backoff_s(attempt)


def transient(status: int) -> bool:
    """A status the same call may not meet again: rate limited or a server error."""
    return status == 429 or status >= 500


def iter_byte_lines(response: httpx.Response) -> Iterator[bytes]:
    """Non-blank lines of a streamed body as bytes (no text decoding on the hot path). The
    pieces of a line longer than a chunk are joined once, so a 20 MB line costs one copy."""
    parts: list[bytes] = []
    for chunk in response.iter_bytes():
        if b"\n" not in chunk:
            parts.append(chunk)
            continue
        lines = chunk.split(b"\n")
        parts.append(lines[0])
        lines[0] = b"".join(parts)
        parts = [lines.pop()]
        yield from (line for line in lines if line.strip())
    rest = b"".join(parts)
    if rest.strip():
        yield rest


def stream_lines(client: httpx.Client, url: str, what: str) -> Iterator[bytes]:
    """The lines of a result download, streamed; ProviderError (retryable when transient, or
    when the connection breaks off) instead of a partial answer going unnoticed."""
    try:
        with client.stream("GET", url) as response:
            if response.status_code >= 300:
                response.read()
                raise ProviderError(
                    f"{what}: {describe(response)}",
                    status=response.status_code,
                    retryable=transient(response.status_code),
                )
            yield from iter_byte_lines(response)
    except httpx.TransportError as exc:
        raise ProviderError(f"{what} cut off: {type(exc).__name__}: {exc}", retryable=True) from exc


def delete_quietly(client: httpx.Client, url: str, what: str) -> None:
    """A best-effort cleanup call: a failure is logged, never raised (404: already gone)."""
    try:
        response = client.delete(url)
    except httpx.HTTPError as exc:
        log.info("could not delete %s: %s", what, exc)
        return
    if response.status_code >= 300 and response.status_code != 404:
        log.info("could not delete %s: %s", what, describe(response))


def describe(response: httpx.Response) -> str:
    """A short error text from a provider response (never the request, which holds the key)."""
    try:
        body: Any = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]!r}"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return f"HTTP {response.status_code}: {error.get('message') or error}"
    return f"HTTP {response.status_code}: {str(body)[:200]}"


def call(
    send: Callable[[], httpx.Response],
    *,
    what: str,
    max_retries: int,
    idempotent: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> httpx.Response:
    """Run `send` until it answers 2xx; raise ProviderError when it will not."""
    attempt = 0
    while True:
        try:
            response = send()
        except httpx.TransportError as exc:
            sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
            retryable = idempotent or not sent
            if not retryable or attempt >= max_retries:
                raise ProviderError(f"{what}: {type(exc).__name__}: {exc}", retryable=True) from exc
            delay = backoff_s(attempt)
        else:
            status = response.status_code
            if status < 300:
                return response
            is_transient = transient(status)
            # A 429 is a refusal, so even a create can be retried safely.
            may_retry = is_transient and (idempotent or status == 429)
            hint = retry_after_s(response)
            if not may_retry or attempt >= max_retries:
                raise ProviderError(
                    f"{what}: {describe(response)}",
                    status=status,
                    retryable=is_transient,
                    retry_after=hint if is_transient else None,
                )
            delay = retry_delay_s(hint, attempt)
        log.info("%s: retrying in %.1fs (attempt %d)", what, delay, attempt + 1)
        sleep(delay)
        attempt += 1


class RetryingCalls:
    """For adapters: `_call` runs one API call under `call`'s retry rules."""

    max_retries: int

    def _call(
        self, what: str, send: Callable[[], httpx.Response], *, idempotent: bool = True
    ) -> httpx.Response:
        return call(send, what=what, max_retries=self.max_retries, idempotent=idempotent)
