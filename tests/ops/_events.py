"""Counting the Celery tasks a stack publishes, from the broker's own task events."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from celery import Celery

from batchrelay.config import Settings


@dataclass
class TaskLog:
    """`task-sent` events (every publish: beat's and the workers') with their arrival times."""

    sent: list[tuple[float, str]] = field(default_factory=list)

    def names(self, since: float = 0.0, until: float = float("inf")) -> list[str]:
        return [name for at, name in self.sent if since <= at < until]


@contextmanager
def task_events(settings: Settings) -> Iterator[TaskLog]:
    """Listen to the broker's event exchange in a thread while the block runs."""
    app = Celery(broker=settings.redis_url.get_secret_value())
    log, ready = TaskLog(), threading.Event()

    def on_sent(event: dict) -> None:
        log.sent.append((time.time(), event.get("name") or "?"))

    with app.connection() as conn:
        receiver = app.events.Receiver(conn, handlers={"task-sent": on_sent})

        def run() -> None:
            ready.set()
            receiver.capture(limit=None, timeout=None, wakeup=False)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        ready.wait(5)
        time.sleep(0.5)  # the fanout subscription is live once capture has consumed
        try:
            yield log
        finally:
            receiver.should_stop = True
            thread.join(10)
