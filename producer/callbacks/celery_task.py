"""The `CeleryTask` callback kind: the result as the one argument of an app's Celery task."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from batchrelay.producer import errors
from batchrelay.producer.callbacks.policy import WebhookPolicy

_TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$")
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")
_MAX_NAME = 255


@dataclass(frozen=True, slots=True)
class CeleryTask:
    """Send the result as the single argument of the Celery task `name` (on `queue`, if given).

    The task runs in the app's own workers; batchrelay only publishes the message.
    """

    kind: ClassVar[str] = "celery"
    name: str
    queue: str | None = None

    def check(self, policy: WebhookPolicy, *, resolve: bool = True) -> None:
        """Names only: a task message goes to batchrelay's own broker, never to a URL."""
        name = self.name
        if not isinstance(name, str) or not name:
            raise errors.InvalidCallbackError("CeleryTask.name must be a non-empty string")
        if len(name) > _MAX_NAME or not _TASK_NAME.match(name):
            raise errors.InvalidCallbackError(
                f"CeleryTask.name {name[:80]!r} is not a task name; use the registered dotted "
                "name, e.g. 'myapp.tasks.on_result'"
            )
        queue = self.queue
        if queue is None:
            return
        if not isinstance(queue, str) or not queue:
            raise errors.InvalidCallbackError("CeleryTask.queue must be a non-empty string or None")
        if len(queue) > _MAX_NAME or not _QUEUE_NAME.match(queue):
            raise errors.InvalidCallbackError(
                f"CeleryTask.queue {queue[:80]!r} is not a queue name (letters, digits, _ . : -)"
            )

    def to_record(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "queue": self.queue}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> CeleryTask:
        return cls(name=record["name"], queue=record.get("queue"))
