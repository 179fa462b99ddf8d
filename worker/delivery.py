"""Delivering final results to their callbacks, at least once, with the request id as key.

Due deliveries are members of the group's `deliver` zset scored by due time (docs/architecture.md,
promise 6): beat leases the due ones in chunks and a worker sends each chunk. A failed attempt is
rescheduled on the retry schedule (or the receiver's Retry-After if longer); 410, an abort header or
an exhausted schedule moves the request to the group's dead letters, which can be replayed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from batchrelay import metrics_store
from batchrelay.producer import commands
from batchrelay.producer.callbacks import CallbackKind, callback_from_record
from batchrelay.producer.keys import tag_of
from batchrelay.producer.records import RESULT_FIELDS, result_payload
from batchrelay.worker.context import Relay
from batchrelay.worker.senders import SENDERS, DeliveryAttempt, SendContext, SendTask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeasedChunk:
    """Due deliveries handed to one task; `leased_until_ms` fences them (see `take_wave` in
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
    """Deliver a chunk on the process's engine (see `_deliver`); returns the outcome counts."""
    engine = relay.engine()
    return engine.run(_deliver(SendContext(relay, send_task, engine), list(rids), leased_until_ms))


async def _deliver(ctx: SendContext, rids: list[str], leased_until_ms: int) -> Counter[str]:
    """A chunk in waves of `delivery_concurrency`: one `take_wave` call takes a wave (fenced by
    the lease: "stale" if this holder lost it) and reads its records; its attempts run in the
    engine's window of `delivery_concurrency` attempts in flight (shared by every chunk the
    process runs), and one `settle_deliveries` call writes the wave's outcomes. The next wave
    is taken while one runs, so the window never waits for a round trip; at most two waves are
    held at once (see `hold_ms`). Every key of a call is one group's, so it is one slot on a
    Redis Cluster: a chunk of several groups is taken group by group."""
    relay, outcomes = ctx.relay, Counter[str]()
    size = relay.settings.delivery_concurrency
    by_group: dict[str, list[str]] = {}
    for rid in rids:
        by_group.setdefault(tag_of(rid), []).append(rid)
    running: deque[tuple[str, list[_Due], list[asyncio.Task[DeliveryAttempt]]]] = deque()
    for tag, ids in by_group.items():
        for start in range(0, len(ids), size):
            wave = ids[start : start + size]
            due, left = await asyncio.to_thread(_take_wave, relay, tag, wave, leased_until_ms)
            outcomes.update(left)
            running.append((tag, due, [asyncio.create_task(_send(ctx, d)) for d in due]))
            if len(running) == 2:
                outcomes.update(await _finish(relay, *running.popleft()))
    while running:
        outcomes.update(await _finish(relay, *running.popleft()))
    return outcomes


def hold_ms(relay: Relay) -> int:
    """How long a taken delivery is held: the lease, and never less than two webhook
    timeouts plus a margin. A taken wave starts at once or as the one before it ends (each
    attempt ends within a timeout), so a slow receiver is not raced by a second sender, and
    what a killed worker held is due again that soon."""
    return max(relay.lease_ms(), int((2 * relay.settings.webhook_timeout_s + 5) * 1000))


@dataclass(frozen=True, slots=True)
class _Due:
    """A taken delivery, ready to send."""

    rid: str
    attempts: int  # before this one
    callback: CallbackKind
    payload: dict[str, Any]


async def _send(ctx: SendContext, item: _Due) -> DeliveryAttempt:
    """One attempt by the sender registered for the callback's kind, in the engine's window."""
    async with ctx.engine.window:
        return await SENDERS[item.callback.kind](ctx, item.rid, item.callback, item.payload)


def _take_wave(
    relay: Relay, tag: str, rids: list[str], leased_until_ms: int
) -> tuple[list[_Due], Counter[str]]:
    """Take a wave of one group's deliveries (each held for `hold_ms`) and read their
    records in one call; returns those to send and the count of the others ("stale", or
    "skipped": already delivered or dead, or without a callback, they left the schedule).
    Run in a thread, so the attempts in flight go on while Redis answers."""
    until = relay.now() + hold_ms(relay)
    call = commands.take_wave(relay.keys, tag, rids, RESULT_FIELDS, leased_until_ms, until)
    due, outcomes = [], Counter[str]()
    meta = relay.group_meta(tag)
    for rid, reply in zip(rids, commands.run(relay.redis, call), strict=True):
        if isinstance(reply, str):
            outcomes[reply] += 1
            continue
        fields = dict(zip(RESULT_FIELDS, reply, strict=True))
        callback = callback_from_record(orjson.loads(fields["callback"]))
        if callback is None:  # a stored `null` callback: nothing to deliver
            relay.redis.zrem(relay.keys.deliver(tag), rid)
            outcomes["skipped"] += 1
            continue
        payload = result_payload(rid, meta, reply)
        due.append(_Due(rid, int(fields["dattempts"] or 0), callback, payload))
    return due, outcomes


async def _finish(
    relay: Relay, tag: str, due: list[_Due], tasks: list[asyncio.Task[DeliveryAttempt]]
) -> Counter[str]:
    """Wait for a wave's attempts and write their outcomes in one call."""
    attempts = await asyncio.gather(*tasks)
    now, schedule = relay.now(), relay.settings.delivery_retry_schedule_s
    rows, counts = [], Counter[str]()
    for item, attempt in zip(due, attempts, strict=True):
        n = item.attempts + 1
        if attempt.ok:
            rows.append(commands.DeliveryOutcome(item.rid, "delivered", n))
            metrics_store.observe_delivered(item.payload, now)
        elif attempt.final or n > len(schedule):
            rows.append(commands.DeliveryOutcome(item.rid, "dead", n, error=attempt.error))
            log.warning("delivery of %s given up after %d attempts: %s", item.rid, n, attempt.error)
        else:
            delay = max(schedule[n - 1], attempt.retry_after or 0.0)
            due_ms = now + int(delay * 1000)
            rows.append(commands.DeliveryOutcome(item.rid, "retry", n, due_ms, attempt.error))
        counts[rows[-1].outcome] += 1
    if rows:
        call = commands.settle_deliveries(relay.keys, tag, now, rows)
        await asyncio.to_thread(commands.run, relay.redis, call)
    for outcome, n in counts.items():
        metrics_store.count("batchrelay_webhook_attempts_total", outcome, n=n)
    return counts


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
