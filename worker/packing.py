"""Deciding when a group is due and claiming one batch worth of its pending requests.

The claim is one Lua call: requests leave the pending queue, become `in_batch` and the batch
record appears in the group's in-flight schedule together, or not at all. A group is claimed
for the first of its candidate profiles (its own, then its fallbacks) that has room now, sized
by that profile's limits and the tokens it has left, and the claim reserves that room at
once, so the next claim sees it taken. Where no candidate has room, requests stay pending
(and cancellable) until one has.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import IO

from batchrelay.config import ProviderProfile
from batchrelay.producer import commands
from batchrelay.producer.keys import new_batch_id
from batchrelay.worker import capacity
from batchrelay.worker.context import CLAIMED, Group, Relay
from batchrelay.worker.providers import BatchAdapter

log = logging.getLogger(__name__)

READ_CHUNK = 1000


def flush_due(relay: Relay, group: Group, profile: ProviderProfile, now: int) -> bool:
    """True when the pending count, bytes or age of the oldest request crosses a threshold."""
    pipe = relay.redis.pipeline(transaction=False)
    pipe.zcard(relay.keys.pending(group.tag))
    pipe.get(relay.keys.pbytes(group.tag))
    pipe.zrange(relay.keys.pending(group.tag), 0, 0, withscores=True)
    count, size, oldest = pipe.execute()
    if not count:
        return False
    s = relay.settings
    max_n = min(
        s.flush_max_requests or profile.max_requests_per_batch, profile.max_requests_per_batch
    )
    max_b = min(s.flush_max_bytes or profile.max_bytes_per_batch, profile.max_bytes_per_batch)
    age_s = (now - oldest[0][1]) / 1000 if oldest else 0.0
    return count >= max_n or int(size or 0) >= max_b or age_s >= s.flush_max_wait_s


def claim(
    relay: Relay,
    group: Group,
    profile: ProviderProfile,
    now: int,
    *,
    due_now: bool = False,
    max_tokens: int = 0,
) -> str | None:
    """Atomically move up to one batch worth of pending requests into a new batch record for
    `profile`, with at most `max_tokens` estimated tokens (0: no bound), and reserve its
    slot and tokens there.

    The batch is due for submission one lease from now (the caller sends it to `submit`
    itself), or at once with `due_now` so the next beat tick hands it out.
    """
    bid = new_batch_id(group.tag)
    k = relay.keys
    call = commands.claim(
        k,
        group.tag,
        bid,
        max_requests=profile.max_requests_per_batch,
        max_bytes=profile.max_bytes_per_batch,
        now_ms=now,
        due_ms=now if due_now else now + relay.lease_ms(),
        bytes_per_token=profile.bytes_per_token(group.model),
        max_tokens=max_tokens,
        fields={"id": bid, "tag": group.tag, "profile": profile.name, "endpoint": group.endpoint,
                "model": group.model, "state": CLAIMED,
                "estimate": f"ratio:{profile.bytes_per_token(group.model)}"},
    )  # fmt: skip
    n, size, tokens = commands.run(relay.redis, call)
    if not n:
        return None
    capacity.reserve(relay, profile, bid, group.model, tokens)
    log.info(
        "claimed batch %s for %s: %d requests, %d bytes, ~%d tokens (%s %s)",
        bid,
        profile.name,
        n,
        size,
        tokens,
        group.endpoint,
        group.model,
    )
    return bid


def candidates(relay: Relay, group: Group) -> list[ProviderProfile] | None:
    """The group's candidate profiles, or None (logged) if its profile is unknown."""
    try:
        return capacity.candidates(relay.settings, group.profile, group.endpoint, group.model)
    except KeyError:
        log.error(
            "group %s names unknown provider profile %r; left pending", group.tag, group.profile
        )
        return None


def group_due(relay: Relay, group: Group, chain: list[ProviderProfile], now: int) -> bool:
    """Whether the group should be packed now: judged by its first candidate with room, and
    never while no candidate has room (a claim could go nowhere)."""
    for profile in chain:
        if capacity.room(relay, profile, group.model) is not None:
            return flush_due(relay, group, profile, now)
    return False


def claim_first(
    relay: Relay, group: Group, chain: list[ProviderProfile], now: int, *, flushing: bool
) -> str | None:
    """Claim one batch for the first candidate with room for at least one request. Unless
    `flushing`, only when the group is due, judged by the first candidate with room."""
    if not flushing and not group_due(relay, group, chain, now):
        return None
    for profile in chain:
        tokens = capacity.room(relay, profile, group.model)
        if tokens is None:
            continue
        bid = claim(relay, group, profile, now, due_now=flushing, max_tokens=tokens)
        if bid is not None:
            return bid
    return None


def aggregate(relay: Relay, now: int | None = None) -> list[str]:
    """Claim every batch that is due and has somewhere to go, in every group; returns the new
    batch ids."""
    now = relay.now() if now is None else now
    claimed: list[str] = []
    for group in packable(relay):
        chain = candidates(relay, group)
        while chain and (bid := claim_first(relay, group, chain, now, flushing=False)):
            claimed.append(bid)
    return claimed


def packable(relay: Relay) -> list[Group]:
    """Groups with requests pending and not backed off, found with one pipelined read."""
    groups = relay.groups()
    pipe = relay.redis.pipeline(transaction=False)
    for group in groups:
        pipe.exists(relay.keys.backoff(group.tag))
        pipe.zcard(relay.keys.pending(group.tag))
    replies = pipe.execute()
    return [g for i, g in enumerate(groups) if not replies[2 * i] and replies[2 * i + 1]]


def any_due(relay: Relay, now: int | None = None) -> bool:
    """Whether `aggregate` would claim something now (what beat asks before sending it)."""
    now = relay.now() if now is None else now
    for group in packable(relay):
        chain = candidates(relay, group)
        if chain and group_due(relay, group, chain, now):
            return True
    return False


def flush(relay: Relay, tags: set[str] | None = None) -> list[str]:
    """Claim everything pending now, whatever the thresholds (the `flush` command); the
    batches are due at once, so the next beat tick submits them. Where no candidate has room,
    batches are sized for the group's first candidate and wait for room at submission."""
    claimed: list[str] = []
    for group in relay.groups():
        if tags is not None and group.tag not in tags:
            continue
        chain = candidates(relay, group)
        if not chain:
            continue
        while True:
            bid = claim_first(relay, group, chain, relay.now(), flushing=True)
            if bid is None:
                first = chain[0]
                budget = first.token_budget(group.model) or 0
                bid = claim(relay, group, first, relay.now(), due_now=True, max_tokens=budget)
            if bid is None:
                break
            claimed.append(bid)
    return claimed


def iter_items(relay: Relay, bid: str) -> Iterator[tuple[str, bytes]]:
    """(request id, body JSON) of the requests still in this batch, in line order, read 1,000
    at a time. A request that left the batch (re-pooled by a refusal cut short by a crash)
    is skipped, so it can never be sent in two batches."""
    owner = bid.encode()
    for ids in iter_item_ids(relay, bid):
        pipe = relay.redis.pipeline(transaction=False)
        for rid in ids:
            pipe.hmget(relay.keys.req(rid), "state", "batch", "body")
        for rid, (state, batch, body) in zip(ids, pipe.execute(), strict=True):
            if state != b"in_batch" or batch != owner:
                continue
            if body is None:
                log.error("request %s of batch %s has no body; left out", rid, bid)
                continue
            yield rid, body


def iter_item_ids(relay: Relay, bid: str) -> Iterator[list[str]]:
    items_key, start = relay.keys.items(bid), 0
    while True:
        ids = relay.redis.lrange(items_key, start, start + READ_CHUNK - 1)
        if not ids:
            return
        yield [i.decode() for i in ids]
        start += READ_CHUNK


def write_input(
    relay: Relay, adapter: BatchAdapter, bid: str, endpoint: str, out: IO[bytes]
) -> int:
    """Stream the batch's input to `out`; returns how many requests it holds."""
    written = 0

    def counted() -> Iterator[tuple[str, bytes]]:
        nonlocal written
        for item in iter_items(relay, bid):
            written += 1
            yield item

    adapter.write_input(out, endpoint, counted())
    return written
