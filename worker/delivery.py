"""Delivering final results to their callbacks, at least once, with the request id as key.

Due deliveries are members of the group's `deliver` zset scored by due time (docs/architecture.md,
promise 6): beat leases the due ones in chunks and a worker sends each chunk. A failed attempt is
rescheduled on the retry schedule (or the receiver's Retry-After if longer); 410, an abort header or
an exhausted schedule moves the request to the group's dead letters, which can be replayed.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson

from batchrelay import metrics_store
from batchrelay.producer import commands
from batchrelay.producer.callbacks import callback_from_record
from batchrelay.producer.keys import tag_of
from batchrelay.producer.records import RESULT_FIELDS, result_payload
from batchrelay.worker.context import Relay
from batchrelay.worker.senders import SENDERS, DeliveryAttempt, SendContext, SendTask

log = logging.getLogger(__name__)

DELIVERY_FIELDS = (*RESULT_FIELDS, "dstate", "dattempts")


@dataclass(frozen=True)
class LeasedChunk:
    """Due deliveries handed to one task; `leased_until_ms` fences them (see `take` in
    relay.lua), so a chunk that outlived its lease in the queue cannot send twice."""

    tag: str
    request_ids: list[str]
    leased_until_ms: int


def lease_due(relay: Relay, now: int | None = None) -> list[LeasedChunk]:
    """Take every due delivery (leased for `lease_s`) as chunks of one group's request ids."""
    now = relay.now() if now is None else now
    chunk = relay.settings.delivery_chunk
    until = now + relay.lease_ms()
    out = []
    for group in relay.groups():
        while True:
            call = commands.lease(relay.keys.deliver(group.tag), now, relay.lease_ms(), chunk)
            ids = commands.run(relay.redis, call)
            if not ids:
                break
            out.append(LeasedChunk(group.tag, ids, until))
            if len(ids) < chunk:
                break
    return out


def deliver_chunk(
    relay: Relay, rids: Iterable[str], leased_until_ms: int, send_task: SendTask
) -> Counter[str]:
    """Deliver a chunk with a few requests in flight at once: a receiver's latency, not our
    CPU, bounds webhook throughput."""
    ctx = SendContext(relay, send_task)
    with ThreadPoolExecutor(relay.settings.delivery_concurrency) as pool:
        outcomes = pool.map(lambda rid: deliver_one(ctx, rid, leased_until_ms), rids)
        return Counter(outcomes)


def deliver_one(ctx: SendContext, rid: str, leased_until_ms: int) -> str:
    """One delivery attempt, if this holder's lease on it is still current ("stale" if not),
    by the sender registered for the callback's kind."""
    relay = ctx.relay
    key, tag = relay.keys.req(rid), tag_of(rid)
    if not _take(relay, tag, rid, leased_until_ms):
        return "stale"
    values = relay.redis.hmget(key, DELIVERY_FIELDS)
    fields = dict(zip(DELIVERY_FIELDS, values, strict=True))
    if fields["state"] is None or fields["dstate"] != b"pending":
        relay.redis.zrem(relay.keys.deliver(tag), rid)
        return "skipped"
    payload = result_payload(rid, relay.group_meta(tag), values[: len(RESULT_FIELDS)])
    callback = callback_from_record(
        orjson.loads(fields["callback"]) if fields["callback"] else None
    )
    if callback is None:
        relay.redis.zrem(relay.keys.deliver(tag), rid)
        return "skipped"
    attempt = SENDERS[callback.kind](ctx, rid, callback, payload)
    outcome = _record(relay, rid, int(fields["dattempts"] or 0) + 1, attempt)
    metrics_store.count("batchrelay_webhook_attempts_total", outcome)
    if outcome == "delivered":
        metrics_store.observe_delivered(payload, relay.now())
    return outcome


def _take(relay: Relay, tag: str, rid: str, leased_until_ms: int) -> bool:
    """Hold the delivery for one attempt from now: the lease, and never less than a full
    webhook timeout plus a margin, so a slow receiver is not raced by a second sender."""
    s = relay.settings
    hold_ms = max(relay.lease_ms(), int((s.webhook_timeout_s + 5) * 1000))
    call = commands.take(relay.keys.deliver(tag), rid, leased_until_ms, relay.now() + hold_ms)
    return commands.run(relay.redis, call)


def _record(relay: Relay, rid: str, attempts: int, attempt: DeliveryAttempt) -> str:
    key, tag, now = relay.keys.req(rid), tag_of(rid), relay.now()
    schedule = relay.settings.delivery_retry_schedule_s
    pipe = relay.redis.pipeline(transaction=True)
    if attempt.ok:
        pipe.hset(key, mapping={"dstate": "delivered", "dattempts": attempts, "delivered": now})
        pipe.zrem(relay.keys.deliver(tag), rid)
        outcome = "delivered"
    elif attempt.final or attempts > len(schedule):
        pipe.hset(key, mapping={"dstate": "dead", "dattempts": attempts, "dlast": attempt.error})
        pipe.zrem(relay.keys.deliver(tag), rid)
        pipe.zadd(relay.keys.dead(tag), {rid: now})
        log.warning("delivery of %s given up after %d attempts: %s", rid, attempts, attempt.error)
        outcome = "dead"
    else:
        delay = max(schedule[attempts - 1], attempt.retry_after or 0.0)
        pipe.hset(key, mapping={"dattempts": attempts, "dlast": attempt.error})
        pipe.zadd(relay.keys.deliver(tag), {rid: now + int(delay * 1000)})
        outcome = "retry"
    pipe.execute()
    return outcome


def dead_letters(relay: Relay) -> list[dict[str, Any]]:
    """Every dead letter with its last error, oldest first."""
    out = []
    for group in relay.groups():
        for rid, score in relay.redis.zrange(relay.keys.dead(group.tag), 0, -1, withscores=True):
            rid_s = rid.decode()
            dlast, dattempts = relay.redis.hmget(relay.keys.req(rid_s), "dlast", "dattempts")
            out.append(
                {
                    "id": rid_s,
                    "dead_at_ms": int(score),
                    "attempts": int(dattempts or 0),
                    "last_error": (dlast or b"").decode(),
                }
            )
    return sorted(out, key=lambda d: d["dead_at_ms"])


def replay(relay: Relay, rids: Iterable[str] | None = None) -> int:
    """Put dead letters back on the delivery schedule (all of them when `rids` is None)."""
    chosen = list(rids) if rids is not None else [d["id"] for d in dead_letters(relay)]
    now, replayed = relay.now(), 0
    for rid in chosen:
        tag = tag_of(rid)
        if relay.redis.zscore(relay.keys.dead(tag), rid) is None:
            continue
        if not relay.redis.exists(relay.keys.req(rid)):
            relay.redis.zrem(relay.keys.dead(tag), rid)  # expired after retention
            continue
        # One transaction: a crash never drops a letter from both lists.
        pipe = relay.redis.pipeline(transaction=True)
        pipe.zrem(relay.keys.dead(tag), rid)
        pipe.hset(relay.keys.req(rid), mapping={"dstate": "pending", "dattempts": 0})
        pipe.zadd(relay.keys.deliver(tag), {rid: now})
        pipe.execute()
        replayed += 1
    return replayed
