"""Providers' batch webhooks: a batch that ended at the provider is made due at once.

OpenAI calls a project webhook when a batch ends (`batch.completed|failed|expired|cancelled`,
Standard Webhooks headers). The call is verified with the profile's `webhook_secret` (HMAC,
timestamp within 300 s), deduplicated on `webhook-id`, and its batch, if it is one of ours,
gets its next-poll time set to now; the caller then sends the poll dispatcher, which polls and
collects it (beat's next tick would too). Nothing else changes, so a lost or refused webhook
costs only latency; polling stays the safety net.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
import redis
from standardwebhooks import Webhook, WebhookVerificationError

from batchrelay import metrics_store
from batchrelay.config import Settings
from batchrelay.producer.keys import Keys, tag_of
from batchrelay.producer.records import now_ms

BATCH_EVENTS = frozenset({"batch.completed", "batch.failed", "batch.expired", "batch.cancelled"})
# OpenAI retries a webhook for up to 72 hours; remember each id a little longer.
DEDUPE_S = 4 * 86400
MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class Refused(Exception):
    """The call is not accepted: answered with `status` and `message`."""

    status: int
    message: str


def receive(
    settings: Settings, client: redis.Redis, profile_name: str, body: bytes, headers: Mapping
) -> dict[str, str]:
    """Verify and apply one webhook call; returns what was done (the JSON answer)."""
    try:
        outcome = _receive(settings, client, profile_name, body, headers)
    except Refused:
        metrics_store.count("batchrelay_provider_webhooks_total", profile_name, "refused")
        raise
    metrics_store.count("batchrelay_provider_webhooks_total", profile_name, outcome["outcome"])
    return outcome


def _receive(
    settings: Settings, client: redis.Redis, profile_name: str, body: bytes, headers: Mapping
) -> dict[str, str]:
    profile = next((p for p in settings.providers if p.name == profile_name), None)
    if profile is None:
        raise Refused(404, f"no provider profile named {profile_name!r}")
    if profile.webhook_secret is None:
        raise Refused(404, f"provider profile {profile_name!r} has no webhook_secret configured")
    try:
        Webhook(profile.webhook_secret.get_secret_value()).verify(body, dict(headers))
    except WebhookVerificationError as exc:
        raise Refused(401, f"webhook signature not accepted: {exc}") from None
    event = orjson.loads(body)
    kind = event.get("type") if isinstance(event, dict) else None
    if kind not in BATCH_EVENTS:
        return {"outcome": "ignored", "type": str(kind)}
    data = event.get("data")
    pbid = data.get("id") if isinstance(data, dict) else None
    if not isinstance(pbid, str) or not pbid:
        raise Refused(400, f"{kind} event without data.id")
    keys = Keys(settings.key_prefix)
    seen = keys.provider_webhook(f"{profile_name}\x00{headers['webhook-id']}")
    if not client.set(seen, pbid, nx=True, ex=DEDUPE_S):
        return {"outcome": "duplicate", "batch": pbid}
    try:
        bid = client.hget(keys.pbatches(profile_name), pbid)
        if bid is None:
            return {"outcome": "not_ours", "batch": pbid}
        ours = bid.decode()
        woken = client.zadd(keys.inflight(tag_of(ours)), {ours: now_ms()}, xx=True, ch=True)
    except redis.RedisError:
        with contextlib.suppress(redis.RedisError):
            client.delete(seen)  # let the provider's retry try again
        raise
    return {"outcome": "due_now" if woken else "not_in_flight", "batch": pbid}
