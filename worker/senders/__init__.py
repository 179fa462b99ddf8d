"""One sender per callback kind, registered under the kind's name.

The producer side of a kind (its dataclass, check and record) is in `producer.callbacks`;
this side needs the worker's dependencies. A test checks both registries name the same kinds.
"""

from __future__ import annotations

from batchrelay.producer.callbacks import CeleryTask, Webhook
from batchrelay.worker.attempt import DeliveryAttempt
from batchrelay.worker.senders.celery_task import send_celery_task
from batchrelay.worker.senders.context import SendContext, Sender, SendTask
from batchrelay.worker.senders.webhook import send_to_webhook

SENDERS: dict[str, Sender] = {
    Webhook.kind: send_to_webhook,
    CeleryTask.kind: send_celery_task,
}

__all__ = ["SENDERS", "DeliveryAttempt", "SendContext", "SendTask", "Sender"]
