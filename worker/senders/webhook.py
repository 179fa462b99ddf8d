"""Sends a `Webhook` callback: one signed POST under the configured secrets and policy."""

from __future__ import annotations

from typing import Any

import orjson

from batchrelay.producer.callbacks import Webhook, WebhookPolicy
from batchrelay.worker.attempt import DeliveryAttempt
from batchrelay.worker.senders.context import SendContext
from batchrelay.worker.webhooks import send_webhook


def send_to_webhook(
    ctx: SendContext, rid: str, cb: Webhook, payload: dict[str, Any]
) -> DeliveryAttempt:
    s = ctx.relay.settings
    secrets = [x.get_secret_value() for x in s.webhook_secrets]
    if not secrets:
        return DeliveryAttempt(
            ok=False, error="no webhook signing secret configured (BATCHRELAY_WEBHOOK_SECRETS)"
        )
    return send_webhook(
        ctx.relay.webhook_client(),
        cb.url,
        orjson.dumps(payload),
        rid,
        secrets,
        policy=WebhookPolicy.from_settings(s),
        timeout=s.webhook_timeout_s,
    )
