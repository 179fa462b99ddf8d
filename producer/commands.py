"""One typed function per relay.lua command: KEYS from the key schema and ARGV built here only.

relay.lua stays one script (as dramatiq's dispatch.lua): ARGV[1] names the command, ARGV[2]
is a pub/sub channel or "-". Each function returns a `Call`, which runs on a client
(`run`, `arun`) or is queued on a pipeline (`Call.queue`, its reply read with `Call.parse`),
so the producer and the worker pipeline the same calls they would send alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Generic, TypeVar

import redis
import redis.asyncio as aredis
from redis.exceptions import NoScriptError

from batchrelay.producer.keys import Keys, tag_of

SOURCE = resources.files("batchrelay.producer").joinpath("relay.lua").read_text()
SHA = hashlib.sha1(SOURCE.encode()).hexdigest()

T = TypeVar("T")


@dataclass(frozen=True)
class Call(Generic[T]):
    """One script call: its KEYS, its ARGV (the command first) and how to read its reply."""

    keys: list[str]
    args: list[Any]
    parse: Callable[[Any], T]

    def queue(self, pipe: Any) -> None:
        """Queue it on a pipeline as a raw EVALSHA (a registered Script would first ask
        SCRIPT EXISTS, a second round trip); the pipeline's owner loads the script on
        NoScriptError and sends the pipeline again."""
        pipe.evalsha(SHA, len(self.keys), *self.keys, *self.args)


def run(client: redis.Redis, call: Call[T]) -> T:
    """Run one call, loading the script first if Redis lost it (a restart or a flush)."""
    try:
        reply = client.evalsha(SHA, len(call.keys), *call.keys, *call.args)
    except NoScriptError:
        client.script_load(SOURCE)
        reply = client.evalsha(SHA, len(call.keys), *call.keys, *call.args)
    return call.parse(reply)


async def arun(client: aredis.Redis, call: Call[T]) -> T:
    """`run` for asyncio."""
    try:
        reply = await client.evalsha(SHA, len(call.keys), *call.keys, *call.args)
    except NoScriptError:
        await client.script_load(SOURCE)
        reply = await client.evalsha(SHA, len(call.keys), *call.keys, *call.args)
    return call.parse(reply)


def _ints(reply: Sequence[Any]) -> tuple[int, ...]:
    return tuple(int(v) for v in reply)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _texts(reply: Sequence[bytes]) -> list[str]:
    return [_text(v) for v in reply]


@dataclass(frozen=True)
class IntakeRow:
    """One request for `intake`: its id, JSONL bytes and encoded fields (b"" when absent)."""

    rid: str
    line_bytes: int
    body: bytes
    callback: bytes
    metadata: bytes
    idempotency_key: str
    tenant: str = ""


def intake(k: Keys, tag: str, created_ms: int, rows: Sequence[IntakeRow]) -> Call[tuple[int, bool]]:
    """Store requests of one group unless their records exist; (stored, group was unlisted)."""
    args: list[Any] = ["intake", "-", k.req_prefix(tag), created_ms]
    for r in rows:
        args += (r.rid, r.line_bytes, r.body, r.callback, r.metadata, r.idempotency_key, r.tenant)
    return Call(
        [k.pending(tag), k.pbytes(tag), k.registered(tag)],
        args,
        lambda reply: (int(reply[0]), bool(int(reply[1]))),
    )


@dataclass(frozen=True)
class IdemReply:
    """Who holds an idempotency key: `owner`; `taken` by this call; `conflict` when the
    holder was stored with another fingerprint (endpoint, body, callback or metadata)."""

    owner: str
    taken: bool
    conflict: bool


def idem(k: Keys, key: str, rid: str, fingerprint: str, ttl_s: int) -> Call[IdemReply]:
    """Take an idempotency key for `rid`, or learn who holds it and whether it matches."""
    return Call(
        [k.idem(key)],
        ["idem", "-", rid, fingerprint, ttl_s],
        lambda reply: IdemReply(_text(reply[0]), bool(int(reply[1])), bool(int(reply[2]))),
    )


def unclaim(k: Keys, key: str, rid: str, fingerprint: str) -> Call[bool]:
    """Give back an idempotency key a failed submit took, if it still points at `rid`."""
    return Call([k.idem(key)], ["unclaim", "-", f"{rid} {fingerprint}"], lambda r: bool(int(r)))


@dataclass(frozen=True)
class Limits:
    """A tenant's quotas as `admit` takes them; 0 is no limit."""

    max_pending: int = 0
    requests_per_day: int = 0
    usd_micro_per_day: int = 0


def admit(
    k: Keys,
    tenant: str,
    date: str,
    rows: Sequence[tuple[str, int]],
    *,
    now_ms: int,
    stale_before_ms: int,
    limits: Limits,
    day_ttl_s: int,
) -> Call[str]:
    """Count (rid, estimated usd_micro) rows against a tenant's quotas, all or none; "ok", or
    the name of the quota that refused them."""
    args: list[Any] = ["admit", "-", now_ms, stale_before_ms, limits.max_pending]
    args += [limits.requests_per_day, limits.usd_micro_per_day, day_ttl_s]
    for rid, usd_micro in rows:
        args += (rid, usd_micro)
    return Call([k.tenant_open(tenant), k.tenant_day(tenant, date)], args, _text)


@dataclass(frozen=True)
class SpendRow:
    """One final request of a tenant: its model ("" when there is nothing to count), usage
    and cost in micro-USD at batch and at synchronous prices."""

    rid: str
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    batch_usd_micro: int = 0
    sync_usd_micro: int = 0


def spend(k: Keys, tenant: str, date: str, rows: Sequence[SpendRow], ttl_s: int) -> Call[int]:
    """Take final requests off a tenant's open set, adding each one's cost once."""
    args: list[Any] = ["spend", "-", ttl_s]
    for r in rows:
        args += (r.rid, r.model, r.input_tokens, r.output_tokens)
        args += (r.batch_usd_micro, r.sync_usd_micro)
    return Call([k.tenant_open(tenant), k.tenant_costs(tenant, date)], args, int)


def cancel(k: Keys, rid: str, now_ms: int, retention_ms: int) -> Call[str]:
    """Cancel a request not yet sent to a provider; "ok", else the state that prevents it
    ("" for no record)."""
    tag = tag_of(rid)
    return Call(
        [k.pending(tag), k.pbytes(tag), k.req(rid), k.alive(tag)],
        ["cancel", k.done(tag), rid, now_ms, retention_ms, k.batch_prefix(tag)],
        _text,
    )


def claim(
    k: Keys,
    tag: str,
    bid: str,
    *,
    max_requests: int,
    max_bytes: int,
    now_ms: int,
    due_ms: int,
    bytes_per_token: float,
    max_tokens: int,
    fields: Mapping[str, Any],
) -> Call[tuple[int, ...]]:
    """Move up to one batch of pending requests into batch `bid`; (requests, bytes, tokens)."""
    args: list[Any] = ["claim", "-", k.req_prefix(tag), max_requests, max_bytes, bid, now_ms]
    args += [due_ms, bytes_per_token, max_tokens]
    for name, value in fields.items():
        args += (name, value)
    return Call(
        [k.pending(tag), k.pbytes(tag), k.batch(bid), k.items(bid), k.inflight(tag)], args, _ints
    )


SettleRow = tuple[str, str, int, bytes]  # request id, outcome, status code, payload


def settle(
    k: Keys,
    bid: str,
    *,
    now_ms: int,
    retention_ms: int,
    max_attempts: int,
    pbatch: str,
    served_by: bytes | str,
    rows: Sequence[SettleRow],
) -> Call[tuple[int, ...]]:
    """Apply provider outcomes to a batch's requests; counts (ok, fail, retry, requeue, stale)."""
    tag = tag_of(bid)
    args: list[Any] = ["settle", k.done(tag), k.req_prefix(tag), bid, now_ms, retention_ms]
    args += [max_attempts, pbatch, served_by]
    for row in rows:
        args += row
    keys = [k.pending(tag), k.pbytes(tag), k.deliver(tag), k.alive(tag), k.bill(tag)]
    return Call(keys, args, _ints)


def reserve(
    k: Keys,
    profile: str,
    model: str,
    bid: str,
    *,
    tokens: int,
    max_live: int,
    budget: int,
    force: bool,
) -> Call[bool]:
    """Hold a batch-in-flight slot and `tokens` at a profile for `bid`, or nothing."""
    return Call(
        [k.live(profile), k.tokens(profile, model)],
        ["reserve", "-", bid, model, tokens, max_live, budget, 1 if force else 0],
        lambda r: bool(int(r)),
    )


def release(k: Keys, profile: str, model: str, bid: str) -> Call[bool]:
    """Give back what `bid` holds at a profile; True if it held anything."""
    return Call(
        [k.live(profile), k.tokens(profile, model)],
        ["release", "-", bid],
        lambda r: bool(int(r)),
    )


def lease(schedule_key: str, now_ms: int, lease_ms: int, limit: int) -> Call[list[str]]:
    """Take up to `limit` due members of a schedule zset, each pushed to now + lease."""
    return Call([schedule_key], ["lease", "-", now_ms, lease_ms, limit], _texts)


STALE, SKIPPED = "stale", "skipped"


def take_wave(
    k: Keys,
    tag: str,
    rids: Sequence[str],
    fields: Sequence[str],
    leased_until_ms: int,
    hold_until_ms: int,
) -> Call[list[str | list[bytes | None]]]:
    """Take a wave of one group's leased deliveries, each held until `hold_until_ms`. Per id:
    `STALE` (the lease is no longer this holder's), `SKIPPED` (nothing to deliver; it left the
    schedule) or the values of `fields` of a taken one. One slot: every key is the group's."""
    keys = [k.deliver(tag), *(k.req(rid) for rid in rids)]
    args = ["take_wave", "-", leased_until_ms, hold_until_ms, len(fields), *fields, *rids]

    def parse(reply: Sequence[Any]) -> list[str | list[bytes | None]]:
        out: list[str | list[bytes | None]] = []
        for item in reply:
            if isinstance(item, list):
                out.append(item[1:])
            else:
                out.append(STALE if int(item) == 0 else SKIPPED)
        return out

    return Call(keys, args, parse)


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    """One attempt's record: `delivered`, `dead` or `retry` (due again at `due_ms`)."""

    rid: str
    outcome: str
    attempts: int
    due_ms: int = 0
    error: str = ""


def settle_deliveries(k: Keys, tag: str, now_ms: int, rows: Sequence[DeliveryOutcome]) -> Call[int]:
    """Write a wave of one group's delivery outcomes in one call; returns how many records
    were written (a record that expired meanwhile only leaves the schedule)."""
    keys = [k.deliver(tag), k.dead(tag), *(k.req(r.rid) for r in rows)]
    args: list[Any] = ["settle_deliveries", "-", now_ms]
    for r in rows:
        if r.outcome not in ("delivered", "dead", "retry"):
            raise ValueError(f"unknown delivery outcome {r.outcome!r}")
        args += [r.rid, r.outcome, r.attempts, r.due_ms, r.error]
    return Call(keys, args, int)


def retire(k: Keys, tag: str) -> Call[bool]:
    """Forget a group that has nothing left; False when it still has something."""
    keys = [k.pending(tag), k.inflight(tag), k.deliver(tag), k.dead(tag)]
    keys += [k.alive(tag), k.registered(tag), k.pbytes(tag)]
    return Call(keys, ["retire"], lambda r: bool(int(r)))
