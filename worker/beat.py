"""RedBeat, made to ride out a Redis restart instead of exiting.

RedBeat keeps the schedule and a lock in Redis, so a second beat is a safe standby. Stock
RedBeat exits when Redis is briefly unreachable or still loading its AOF; this scheduler
logs and retries the tick a second later. Losing the lock to another beat still exits
(two active beats would double every tick).
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.exceptions import OperationalError
from redbeat import RedBeatScheduler
from redis.exceptions import ConnectionError, TimeoutError

log = logging.getLogger(__name__)

RETRY_S = 1.0


class ResilientRedBeatScheduler(RedBeatScheduler):
    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            return super().tick(*args, **kwargs)
        except (ConnectionError, TimeoutError, OperationalError) as exc:
            log.warning("beat: Redis unavailable (%s: %s); retrying", type(exc).__name__, exc)
            return RETRY_S
