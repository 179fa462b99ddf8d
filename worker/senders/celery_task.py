"""Sends a `CeleryTask` callback: publishes the app's task with the payload as its argument."""

from __future__ import annotations

import asyncio
from typing import Any

from batchrelay.producer.callbacks import CeleryTask
from batchrelay.worker.attempt import DeliveryAttempt
from batchrelay.worker.senders.context import SendContext


async def send_celery_task(
    ctx: SendContext, rid: str, cb: CeleryTask, payload: dict[str, Any]
) -> DeliveryAttempt:
    """Publishes in a thread (as the thread-per-attempt sender did before): a slow or
    retrying broker must not stall the loop and with it every webhook in flight, whose
    attempts must each end within a timeout (the hold of `take_wave`)."""
    try:
        await asyncio.to_thread(ctx.send_task, cb.name, payload, cb.queue)
    except Exception as exc:  # a broker hiccup must not lose the delivery: retry it
        return DeliveryAttempt(ok=False, error=f"send_task failed: {type(exc).__name__}: {exc}")
    return DeliveryAttempt(ok=True)
