"""Delivering final results to their callbacks, at least once, with the request id as key.

Due deliveries are members of the group's `deliver` zset scored by due time (docs/architecture.md,
promise 6): beat leases the due ones in chunks and a worker sends each chunk. A failed attempt is
rescheduled on the retry schedule (or the receiver's Retry-After if longer); 410, an abort header or
an exhausted schedule moves the request to the group's dead letters, which can be replayed.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
from batchrelay.producer import commands
from batchrelay.producer.callbacks import CallbackKind, callback_from_record
from batchrelay.producer.keys import tag_of
from batchrelay.producer.records import RESULT_FIELDS, result_payload
from batchrelay.worker.context import Relay
from batchrelay.worker.senders import SENDERS, DeliveryAttempt, SendContext, SendTask
from redis.exceptions import NoScriptError

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
    """Deliver a chunk in waves of `delivery_concurrency`: one round trip takes a wave's
    requests (if this holder's lease on each is still current; "stale" if not) and reads
    their records; its attempts run in a pool of as many threads (a receiver's latency, not
    our CPU, bounds webhook throughput) and one transaction writes their outcomes. The next
    wave is taken and queued while one runs, so the threads never wait for a round trip; at
    most two waves are held at once (see `hold_ms`)."""
    ctx = SendContext(relay, send_task)
    outcomes: Counter[str] = Counter()
    ids, wave = list(rids), relay.settings.delivery_concurrency
    running: deque[tuple[list[_Due], list[Future[DeliveryAttempt]]]] = deque()
    with ThreadPoolExecutor(wave) as pool:
        for start in range(0, len(ids), wave):
            due = _take_all(relay, ids[start : start + wave], leased_until_ms, outcomes)
            running.append((due, [pool.submit(_send, ctx, item) for item in due]))
            if len(running) == 2:
                outcomes.update(_finish(relay, *running.popleft()))
        while running:
            outcomes.update(_finish(relay, *running.popleft()))
    return outcomes


def hold_ms(relay: Relay) -> int:
    """How long a taken delivery is held: the lease, and never less than two webhook
    timeouts plus a margin. A taken wave starts at once or behind the one running (each
    attempt ends within a timeout), so a slow receiver is not raced by a second sender, and
    what a killed worker held is due again that soon."""
    return max(relay.lease_ms(), int((2 * relay.settings.webhook_timeout_s + 5) * 1000))


def _finish(relay: Relay, due: list[_Due], futures: list[Future[DeliveryAttempt]]) -> Counter[str]:
    return _record_all(relay, [(item, f.result()) for item, f in zip(due, futures, strict=True)])


@dataclass(frozen=True, slots=True)
class _Due:
    """A taken delivery, ready to send."""

    rid: str
    attempts: int  # before this one
    callback: CallbackKind
    payload: dict[str, Any]


def _send(ctx: SendContext, item: _Due) -> DeliveryAttempt:
    """One attempt by the sender registered for the callback's kind."""
    return SENDERS[item.callback.kind](ctx, item.rid, item.callback, item.payload)


def _take_all(
    relay: Relay, rids: list[str], leased_until_ms: int, outcomes: Counter[str]
) -> list[_Due]:
    """Take a wave of deliveries (each held for `hold_ms`) and read their records, in one
    round trip. Those already delivered or dead, or without a callback, leave the schedule
    ("skipped")."""
    if not rids:
        return []
    until = relay.now() + hold_ms(relay)
    calls = [
        commands.take(relay.keys.deliver(tag_of(rid)), rid, leased_until_ms, until) for rid in rids
    ]

    def queue(pipe: Any) -> Any:
        for rid, call in zip(rids, calls, strict=True):
            call.queue(pipe)
            pipe.hmget(relay.keys.req(rid), DELIVERY_FIELDS)
        return pipe

    try:
        replies = queue(relay.redis.pipeline(transaction=False)).execute()
    except NoScriptError:  # Redis restarted or was flushed: every take failed, none held
        relay.redis.script_load(commands.SOURCE)
        replies = queue(relay.redis.pipeline(transaction=False)).execute()
    due, skipped = [], []
    for i, (rid, call) in enumerate(zip(rids, calls, strict=True)):
        if not call.parse(replies[2 * i]):
            outcomes["stale"] += 1
            continue
        values = replies[2 * i + 1]
        fields = dict(zip(DELIVERY_FIELDS, values, strict=True))
        callback = None
        if fields["state"] is not None and fields["dstate"] == b"pending" and fields["callback"]:
            callback = callback_from_record(orjson.loads(fields["callback"]))
        if callback is None:
            skipped.append(rid)
            continue
        payload = result_payload(rid, relay.group_meta(tag_of(rid)), values[: len(RESULT_FIELDS)])
        due.append(_Due(rid, int(fields["dattempts"] or 0), callback, payload))
    if skipped:
        pipe = relay.redis.pipeline(transaction=False)
        for rid in skipped:
            pipe.zrem(relay.keys.deliver(tag_of(rid)), rid)
        pipe.execute()
        outcomes["skipped"] += len(skipped)
    return due


def _record_all(relay: Relay, done: list[tuple[_Due, DeliveryAttempt]]) -> Counter[str]:
    """Write finished attempts in one transaction: delivered, rescheduled on the retry
    schedule (or the receiver's Retry-After if longer), or moved to the dead letters."""
    if not done:
        return Counter()
    now, schedule = relay.now(), relay.settings.delivery_retry_schedule_s
    pipe = relay.redis.pipeline(transaction=True)
    outcomes: Counter[str] = Counter()
    for item, attempt in done:
        rid, attempts = item.rid, item.attempts + 1
        key, deliver = relay.keys.req(rid), relay.keys.deliver(tag_of(rid))
        if attempt.ok:
            pipe.hset(key, mapping={"dstate": "delivered", "dattempts": attempts, "delivered": now})
            pipe.zrem(deliver, rid)
            outcomes["delivered"] += 1
        elif attempt.final or attempts > len(schedule):
            mapping = {"dstate": "dead", "dattempts": attempts, "dlast": attempt.error}
            pipe.hset(key, mapping=mapping)
            pipe.zrem(deliver, rid)
            pipe.zadd(relay.keys.dead(tag_of(rid)), {rid: now})
            log.warning(
                "delivery of %s given up after %d attempts: %s", rid, attempts, attempt.error
            )
            outcomes["dead"] += 1
        else:
            delay = max(schedule[attempts - 1], attempt.retry_after or 0.0)
            pipe.hset(key, mapping={"dattempts": attempts, "dlast": attempt.error})
            pipe.zadd(deliver, {rid: now + int(delay * 1000)})
            outcomes["retry"] += 1
    pipe.execute()
    return outcomes


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
