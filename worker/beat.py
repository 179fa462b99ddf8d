"""RedBeat, made to wait for Redis instead of exiting, to keep its password out of sight, and
to send a dispatcher task only when its work is due (`worker/dispatch.py`, promise 11).

RedBeat keeps the schedule and a lock in Redis, so a second beat is a safe standby. Stock
RedBeat exits when Redis is unreachable at start, briefly unreachable later, or still
loading its AOF; this scheduler logs and retries a second later, at start and on every tick.
Losing the lock to another beat still exits (two active beats would double every tick).

The app's `redbeat_redis_url` is the masked URL (Celery's `inspect conf` and Flower show it
as is); this scheduler hands RedBeat a client built from the app's settings
(`producer.connection`), so the schedule and lock live on the state Redis, a cluster too
(RedBeat's pipelines are not transactions there, and its lock is one key).
"""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError
from redbeat import RedBeatScheduler
from redbeat.schedulers import REDBEAT_REDIS_KEY, acquire_distributed_beat_lock
from redbeat.schedulers import RedBeatSchedulerEntry as ScheduleEntry
from redis.exceptions import ConnectionError, TimeoutError

from batchrelay.producer.connection import connect
from batchrelay.worker.celery_app import relay_of
from batchrelay.worker.dispatch import PROBES

log = logging.getLogger(__name__)

RETRY_S = 1.0
UNAVAILABLE = (ConnectionError, TimeoutError, OperationalError)


class ResilientRedBeatScheduler(RedBeatScheduler):
    def __init__(self, app: Celery, *args: Any, **kwargs: Any) -> None:
        settings = app.batchrelay_settings  # type: ignore[attr-defined]
        self._settings = settings
        self._shown_url = str(settings.redis_url)
        super().__init__(app, *args, **kwargs)

    def setup_schedule(self) -> None:
        """Store the static schedule, waiting for Redis however long it takes to answer."""
        while True:
            try:
                if getattr(self.app, REDBEAT_REDIS_KEY, None) is None:
                    client = connect(self._settings, decode_responses=True)
                    setattr(self.app, REDBEAT_REDIS_KEY, client)
                super().setup_schedule()
                return
            except UNAVAILABLE as exc:
                self._unavailable("cannot load the schedule", exc)
                time.sleep(RETRY_S)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            if self.lock_key and self.lock is None:
                # Redis went away between loading the schedule and taking the lock at start.
                acquire_distributed_beat_lock(sender=SimpleNamespace(scheduler=self))
            return super().tick(*args, **kwargs)
        except UNAVAILABLE as exc:
            self._unavailable("tick skipped", exc)
            return RETRY_S

    def maybe_due(self, entry: ScheduleEntry, **kwargs: Any) -> float:
        """Send the entry's task when due, unless it is a dispatcher with nothing to do: then
        the entry is only advanced, so it comes round again next tick. A Redis error while
        asking skips the tick (see `tick`)."""
        probe = PROBES.get(entry.task)
        if probe is not None:
            is_due, next_time_to_run = entry.is_due()
            if is_due and not probe(relay_of(self.app)):
                self.reserve(entry)
                return next_time_to_run
        return super().maybe_due(entry, **kwargs)

    def _unavailable(self, what: str, exc: Exception) -> None:
        log.warning(
            "beat: Redis at %s unavailable (%s: %s); %s, retrying in %.0f s",
            self._shown_url,
            type(exc).__name__,
            exc,
            what,
            RETRY_S,
        )
