"""Finding batches that need a worker: due polls, and work a killed process left half done.

Every live batch sits in its group's `inflight` zset, scored by when it next needs attention.
Handing one out pushes its score one lease ahead; the handler sets the real next time. So a batch
whose handler died is simply due again one lease later (docs/architecture.md, promise 3), with no
countdowns. The sweep also gives back profile slots and tokens that a killed process left reserved,
and forgets provider batch ids whose batch records have expired.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import orjson

from batchrelay.costs import bill
from batchrelay.producer import commands
from batchrelay.producer.keys import run_fingerprint_of
from batchrelay.worker import capacity
from batchrelay.worker.context import CLAIMED, COLLECTING, DONE, RETIRED, SUBMITTED, UPLOADED, Relay

log = logging.getLogger(__name__)

LEASE_LIMIT = 200
ACTIONS = {CLAIMED: "submit", UPLOADED: "submit", SUBMITTED: "poll", COLLECTING: "collect"}


def lease_due_batches(relay: Relay, now: int | None = None) -> list[tuple[str, str]]:
    """(action, batch id) for every batch due now, each leased so no other tick takes it."""
    now = relay.now() if now is None else now
    out = []
    for group in relay.groups():
        key = relay.keys.inflight(group.tag)
        due = commands.run(relay.redis, commands.lease(key, now, relay.lease_ms(), LEASE_LIMIT))
        for bid in due:
            state = relay.redis.hget(relay.keys.batch(bid), "state")
            action = ACTIONS.get(state.decode()) if state else None
            if action is None:
                # The record expired or the batch is done: nothing left to drive.
                if state is None or state.decode() == DONE:
                    relay.redis.zrem(key, bid)
                continue
            out.append((action, bid))
    return out


WORKER_STATES = frozenset({CLAIMED, UPLOADED, COLLECTING})


def stuck_batches(relay: Relay) -> list[dict[str, str]]:
    """Live batches whose provider status has not changed for too long (see polling), and
    batches our side has held too long without getting them to the provider or collected
    (no room anywhere, a listing or download the provider keeps refusing): marked here."""
    out, now = [], relay.now()
    limit_ms = relay.settings.stuck_after_s * 1000
    for group in relay.groups():
        for raw in relay.redis.zrange(relay.keys.inflight(group.tag), 0, -1):
            rec = relay.batch(raw.decode())
            if not rec.get("stuck") and rec.get("state") in WORKER_STATES:
                since = int(rec.get("pstatus_since") or rec.get("claimed") or now)
                if now - since > limit_ms:
                    why = rec.get("error") or "no progress"
                    rec["stuck"] = f"{rec['state']} since {since}: {why}"
                    relay.set_batch(rec["id"], stuck=rec["stuck"])
            if rec.get("stuck"):
                out.append(rec)
    return out


def release_stale(relay: Relay) -> int:
    """Give back reservations of batches that are done, gone, or now placed at another
    profile; returns how many. A batch still being placed is skipped (its lease is held)."""
    released = 0
    for profile in relay.settings.providers:
        for bid, model in capacity.reserved(relay, profile.name).items():
            fp = run_fingerprint_of(bid)
            if fp is not None:  # a `batchrelay run` part: held while that run is alive
                if not relay.redis.exists(relay.keys.run_alive(fp)):
                    released += capacity.release(relay, profile.name, model, bid)
                continue
            rec = relay.batch(bid)
            if rec and rec.get("state") != DONE and rec.get("profile") == profile.name:
                continue
            if rec and rec.get("state") != DONE:
                with relay.batch_lease(bid) as held:
                    if not held or relay.batch(bid).get("profile") == profile.name:
                        continue
                    released += capacity.release(relay, profile.name, model, bid)
                continue
            released += capacity.release(relay, profile.name, model, bid)
    if released:
        log.warning("gave back %d reservation(s) left by finished or moved batches", released)
    return released


def prune_registry(relay: Relay) -> int:
    """Forget provider batch ids whose batch record has expired; returns how many."""
    pruned = 0
    for profile in relay.settings.providers:
        key = relay.keys.pbatches(profile.name)
        for pbid, bid in relay.redis.hscan_iter(key, count=500):
            fp = run_fingerprint_of(bid.decode())
            record = relay.keys.run(fp) if fp else relay.keys.batch(bid.decode())
            if not relay.redis.exists(record):
                pruned += relay.redis.hdel(key, pbid)
    return pruned


# How long a retired group stays watched for a request that reached it mid-retirement: far
# longer than the gap between a producer listing a group and its intake (one pipeline).
RETIRED_WATCH_MS = 3_600_000


def retire_idle_groups(relay: Relay) -> list[str]:
    """Take groups with nothing left off the groups list, so every tick does not keep visiting
    them (any model a profile's globs allow makes a group); returns their tags.

    One pipelined look at every group first; an idle-looking one is moved to a `retired:`
    tombstone in the same hash (one MULTI), then `retire` in relay.lua checks it atomically
    and it is moved back if that fails. A producer that lists the group after the move lists
    it again; one that listed it just before has its request seen by `watch_retired`, which
    also repairs a retirement a crash cut short.
    """
    watch_retired(relay)
    k = relay.keys
    listed, _ = _groups_hash(relay)
    retired = []
    probes = _probe(relay, listed)
    for (tag, entry), (busy, _registered) in zip(listed.items(), probes, strict=True):
        if busy:
            continue
        tombstone = orjson.dumps({**orjson.loads(entry), "at": relay.now()})
        pipe = relay.redis.pipeline(transaction=True)
        pipe.hset(k.groups, RETIRED + tag, tombstone)
        pipe.hdel(k.groups, tag)
        pipe.execute()
        if commands.run(relay.redis, commands.retire(k, tag)):
            retired.append(tag)
        else:
            _relist(relay, tag, entry)
    if retired:
        log.info("retired %d idle group(s): %s", len(retired), " ".join(retired))
    return retired


def watch_retired(relay: Relay) -> list[str]:
    """List again each retired group that has work or records after all (a request that
    arrived mid-retirement, or a retirement cut short by a crash); forget tombstones older
    than the watch period. Returns the tags listed again."""
    now = relay.now()
    _, tombstones = _groups_hash(relay)
    relisted = []
    probes = _probe(relay, tombstones)
    for (tag, raw), (busy, registered) in zip(tombstones.items(), probes, strict=True):
        meta = orjson.loads(raw)
        at = meta.pop("at", 0)
        if registered or busy:
            log.warning("group %s got work while being retired; listing it again", tag)
            _relist(relay, tag, orjson.dumps(meta))
            relisted.append(tag)
        elif now - at > RETIRED_WATCH_MS:
            relay.redis.hdel(relay.keys.groups, RETIRED + tag)
    return relisted


def _groups_hash(relay: Relay) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The groups hash in one read: (listed tag -> entry, retired tag -> tombstone)."""
    listed, tombstones = {}, {}
    for field, raw in relay.redis.hgetall(relay.keys.groups).items():
        name = field.decode()
        if name.startswith(RETIRED):
            tombstones[name[len(RETIRED) :]] = raw
        else:
            listed[name] = raw
    return listed, tombstones


def _probe(relay: Relay, tags: Iterable[str]) -> list[tuple[bool, bool]]:
    """Per group, in one pipeline: (busy: anything pending, in flight, due, dead, or a record
    not yet expired; registered: intake's mark is set)."""
    k, tags = relay.keys, list(tags)
    pipe = relay.redis.pipeline(transaction=False)
    for tag in tags:
        for zset in (k.pending(tag), k.inflight(tag), k.deliver(tag), k.dead(tag)):
            pipe.zcard(zset)
        pipe.exists(k.alive(tag))
        pipe.exists(k.registered(tag))
    replies = pipe.execute()
    return [(any(replies[6 * i : 6 * i + 5]), bool(replies[6 * i + 5])) for i in range(len(tags))]


def _relist(relay: Relay, tag: str, entry: bytes) -> None:
    pipe = relay.redis.pipeline(transaction=True)
    pipe.hset(relay.keys.groups, tag, entry)
    pipe.hdel(relay.keys.groups, RETIRED + tag)
    pipe.execute()


def drain_bills(relay: Relay) -> int:
    """Count what a settle left unbilled (a worker killed between `settle` and `bill`): a
    group's bill is otherwise drained only by its next settle, which an idle group never
    has, and `admit` forgets old `open` entries, after which `spend` cannot count them.
    One pipelined look at every group's bill; returns how many requests were counted."""
    groups = relay.groups()
    pipe = relay.redis.pipeline(transaction=False)
    for group in groups:
        pipe.exists(relay.keys.bill(group.tag))
    waiting = [g for g, n in zip(groups, pipe.execute(), strict=True) if n]
    return sum(bill(relay.redis, relay.keys, g.tag, g.model) for g in waiting)


def sweep(relay: Relay) -> int:
    """Give back stale reservations, count unbilled costs, prune the provider-batch registry
    and idle groups, and log every stuck batch; returns how many batches are stuck."""
    release_stale(relay)
    drain_bills(relay)
    prune_registry(relay)
    retire_idle_groups(relay)
    stuck = stuck_batches(relay)
    for rec in stuck:
        log.warning(
            "stuck batch %s (provider %s): %s", rec["id"], rec.get("pbatch"), rec.get("stuck")
        )
    return len(stuck)
