"""Sends a `Webhook` callback: one signed POST under the configured secrets and policy."""

from __future__ import annotations

from typing import Any

import orjson

from batchrelay.producer.callbacks import Webhook
from batchrelay.worker.attempt import DeliveryAttempt
from batchrelay.worker.senders.context import SendContext
from batchrelay.worker.webhooks import send_webhook


async def send_to_webhook(
    ctx: SendContext, rid: str, cb: Webhook, payload: dict[str, Any]
) -> DeliveryAttempt:
    engine = ctx.engine
    if engine.signer is None:
        return DeliveryAttempt(
            ok=False, error="no webhook signing secret configured (BATCHRELAY_WEBHOOK_SECRETS)"
        )
    return await send_webhook(
        engine.webhooks,
        cb.url,
        orjson.dumps(payload),
        rid,
        engine.signer,
        timeout=ctx.relay.settings.webhook_timeout_s,
    )
