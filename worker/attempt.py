"""The outcome of one delivery attempt, whatever the callback kind."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """One attempt's outcome; delivery records it (delivered, retry or dead letter).

    `final` stops retries at once (a webhook receiver answered 410 or asked to abort);
    `retry_after` is the receiver's wish, honoured when longer than the schedule. `status`,
    `duration_s` and `response_excerpt` describe an HTTP attempt (None / 0 / "" otherwise).
    `error` never holds the callback URL's query or a secret.
    """

    ok: bool
    error: str = ""
    final: bool = False
    retry_after: float | None = None
    status: int | None = None
    duration_s: float = 0.0
    response_excerpt: str = ""
