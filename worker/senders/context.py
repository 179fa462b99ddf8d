"""What a sender may use, and the shape every sender has."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batchrelay.worker.attempt import DeliveryAttempt

if TYPE_CHECKING:
    from batchrelay.worker.context import Relay
    from batchrelay.worker.engine import Engine

# Publishes a Celery task by name on a queue (None: the default queue); the task runner's.
SendTask = Callable[[str, dict[str, Any], str | None], None]


@dataclass(frozen=True)
class SendContext:
    """The relay (settings), the app-task publisher and the process's delivery engine (the
    loop senders run on, the webhook client and signer)."""

    relay: Relay
    send_task: SendTask
    engine: Engine


# (context, request id, the callback, the result payload) -> the attempt's outcome, run on the
# engine's loop. A sender never raises for what the destination does: it returns a failed
# attempt to be retried.
Sender = Callable[[SendContext, str, Any, dict[str, Any]], Awaitable[DeliveryAttempt]]
