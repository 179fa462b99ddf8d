"""Which dispatcher task beat sends on a tick: only one whose work Redis says is due.

Beat still wakes every `TICK_S`, but it reads the due-times first (a few pipelined reads per
group, whatever the backlog) and publishes `aggregate`, `poll` or `deliver_due` only when it
would find something to do, so an idle relay publishes no Celery task but the minutely sweep
(promise 11). Every due-time stays in Redis (promise 6): a beat or worker killed at any point
leaves its work due, and the next tick of whichever beat holds the lock sends it.
"""

from __future__ import annotations

from collections.abc import Callable

from batchrelay.worker import packing
from batchrelay.worker.context import Relay


def _earliest_due(relay: Relay, zset: Callable[[str], str], now: int) -> bool:
    """Whether any group's schedule zset (`inflight` or `deliver`) has a member due by `now`."""
    pipe = relay.redis.pipeline(transaction=False)
    for group in relay.groups():
        pipe.zrange(zset(group.tag), 0, 0, withscores=True)
    return any(first and first[0][1] <= now for first in pipe.execute())


def batches_due(relay: Relay) -> bool:
    """A batch needs a worker: a poll is due, or a submit or collect to re-drive."""
    return _earliest_due(relay, relay.keys.inflight, relay.now())


def deliveries_due(relay: Relay) -> bool:
    return _earliest_due(relay, relay.keys.deliver, relay.now())


def groups_due(relay: Relay) -> bool:
    return packing.any_due(relay)


# Task name -> whether it has work now; beat asks before sending the task.
PROBES: dict[str, Callable[[Relay], bool]] = {
    "batchrelay.aggregate": groups_due,
    "batchrelay.poll": batches_due,
    "batchrelay.deliver_due": deliveries_due,
}
