"""The producer's logic without I/O: every operation is a generator of Redis steps.

A flow yields `Pipeline` (commands for one round trip; it is sent their replies), `Listen`
(subscribe to channels) or `Pause` (wait for a message on them) and returns the operation's
result. `BatchRelay` and `AsyncBatchRelay` drive the same flows with redis-py's sync and
asyncio clients, so the two APIs cannot drift apart.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import methodcaller
from typing import Any, TypeVar

import orjson

from batchrelay.config import Settings
from batchrelay.config.tenants import Tenants
from batchrelay.producer import commands, errors
from batchrelay.producer.admission import Admission
from batchrelay.producer.callbacks import Callback
from batchrelay.producer.intake import Intake, Prepared
from batchrelay.producer.keys import Keys, new_request_id, tag_of
from batchrelay.producer.records import (
    CANCELLED,
    FINAL_STATES,
    IN_BATCH,
    RESULT_FIELDS,
    STATUS_FIELDS,
    RequestStatus,
    StateCounts,
    now_ms,
    result_payload,
    status_from_fields,
)

T = TypeVar("T")
P = TypeVar("P")

CHUNK = 1000  # requests per round trip (submit, bulk reads)
# `open` entries younger than this are never healed away: their intake may be under way.
OPEN_GRACE_MS = 120_000
HEAL_LIMIT = 1000  # entries looked at per refused submit
CANCELLED_B = CANCELLED.encode()
# A pubsub message can be lost (Redis restart, reconnect), and pending -> in_batch is not
# announced: a wait re-reads the states this often anyway, a safety net, not a busy poll
# (every second when someone shows progress).
RECHECK_S = 5.0
PROGRESS_RECHECK_S = 1.0
# Re-reading a very large wait may take at most a tenth of the time.
READ_SHARE = 10


@dataclass(frozen=True)
class Pipeline:
    """Commands sent in one round trip; each op queues one command on a pipeline."""

    ops: list[Callable[[Any], Any]]

    def queue_on(self, pipe: P) -> P:
        for op in self.ops:
            op(pipe)
        return pipe


@dataclass(frozen=True)
class Listen:
    """Subscribe to these channels for the rest of the flow."""

    channels: list[str]


@dataclass(frozen=True)
class Pause:
    """Wait up to `seconds` for a message on the channels listened to, then swallow the
    others already there, and let at least `at_least` seconds pass in all."""

    seconds: float
    at_least: float


Step = Pipeline | Listen | Pause
Flow = Generator[Step, Any, T]


@dataclass(frozen=True)
class SubmitItem:
    endpoint: str
    body: Mapping[str, Any]
    callback: Callback | None = None
    idempotency_key: str | None = None
    metadata: Mapping[str, Any] | None = None


class Submitted(list[str]):
    """The ids `submit_many` returns, in order; `new` counts the requests this call stored
    (the others were stored before, under the same idempotency keys)."""

    def __init__(self, ids: Iterable[str], new: int):
        super().__init__(ids)
        self.new = new


def _item(item: SubmitItem | Mapping[str, Any]) -> SubmitItem:
    if isinstance(item, SubmitItem):
        return item
    if isinstance(item, Mapping):
        unknown = set(item) - {"endpoint", "body", "callback", "idempotency_key", "metadata"}
        if unknown:
            raise errors.InvalidRequestError(f"unknown submit_many item field(s) {sorted(unknown)}")
        if "endpoint" not in item or "body" not in item:
            raise errors.InvalidRequestError("submit_many items need 'endpoint' and 'body'")
        return SubmitItem(**item)
    raise errors.InvalidRequestError(
        f"submit_many items are SubmitItem or dict, got {type(item).__name__}"
    )


def unavailable(settings: Settings, exc: Exception) -> errors.RelayUnavailableError:
    """The error for a Redis that cannot be used; the URL's password is masked."""
    return errors.RelayUnavailableError(
        f"cannot use Redis at {settings.redis_url}: {type(exc).__name__}: {exc}"
    )


def _first(rid: str, p: Prepared, seen: set[str]) -> bool:
    """Whether `rid` is met for the first time; only a keyed item can repeat one, so only
    those are remembered (a list of 200,000 fresh ids needs no copy)."""
    if not p.idempotency_key:
        return True
    if rid in seen:
        return False
    seen.add(rid)
    return True


class Core:
    """What `BatchRelay` and `AsyncBatchRelay` do, as flows (see the module docstring)."""

    def __init__(self, settings: Settings, tenants: Tenants | None = None):
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.intake = Intake(settings)
        self.tenants = tenants
        self.admission = Admission(settings, self.keys)
        self.retention_s = settings.result_retention_s
        self._meta: dict[str, dict[str, str]] = {}  # group tag -> profile, endpoint, model
        self._listed: dict[str, bytes] = {}  # group tag -> its groups-hash entry

    def unavailable(self, exc: Exception) -> errors.RelayUnavailableError:
        return unavailable(self.settings, exc)

    # --- submit ---

    def prepare_many(
        self, items: Iterable[SubmitItem | Mapping[str, Any]], tenant: str | None = None
    ) -> list[Prepared]:
        """Check every item before anything is stored; an error names the item's index.
        Stops at the item that takes the call past `submit_max_bytes` of batch lines."""
        prepared = []
        limit, total = self.settings.submit_max_bytes, 0
        for i, raw in enumerate(items):
            try:
                item = _item(raw)
                prepared.append(
                    self.intake.prepare(
                        item.endpoint,
                        item.body,
                        callback=item.callback,
                        idempotency_key=item.idempotency_key,
                        metadata=item.metadata,
                        tenant=tenant,
                    )
                )
            except errors.BatchRelayError as exc:
                raise type(exc)(f"item {i}: {exc}") from None
            total += prepared[-1].line_bytes
            if total > limit:
                raise errors.SubmitTooLargeError(
                    f"items 0-{i} come to {total:,} bytes as batch lines, over the "
                    f"{limit:,} one submit_many call may hold (submit_max_bytes); "
                    "split the items over several calls"
                )
        return prepared

    def store(self, prepared: list[Prepared], *, numbered: bool) -> Flow[Submitted]:
        """Store checked requests and return their ids. Idempotency keys are all settled
        first, so a conflict stores nothing; then one `intake` per group per CHUNK, pipelined.
        `numbered`: errors name the item's index (submit_many). A tenant's new requests
        are admitted by its quotas in between (see `producer.admission`)."""
        ids = [new_request_id(p.tag) for p in prepared]
        keyed = [i for i, p in enumerate(prepared) if p.idempotency_key]
        taken = (yield from self._claim_keys(prepared, keyed, ids, numbered)) if keyed else []
        tenant = prepared[0].tenant if prepared else ""
        if tenant:
            unique = list(dict(zip(ids, prepared, strict=True)).items())  # a repeated key: once
            yield from self._admit(tenant, prepared, ids, unique, taken)
        new = 0
        seen: set[str] = set()  # ids of keyed items: a key given twice is stored once
        for start in range(0, len(ids), CHUNK):
            chunk = zip(ids[start : start + CHUNK], prepared[start : start + CHUNK], strict=True)
            part = [(rid, p) for rid, p in chunk if _first(rid, p, seen)]
            if part:
                new += yield from self._intake(part)
        return Submitted(ids, new)

    def _admit(
        self,
        tenant: str,
        prepared: list[Prepared],
        ids: list[str],
        unique: list[tuple[str, Prepared]],
        taken: list[int],
    ) -> Flow[None]:
        """Count the requests this call stores new (not those an idempotency key pointed at
        an earlier one) against the tenant's quotas; on a refusal give back the keys this
        call took and raise QuotaExceededError."""
        held = {ids[i] for i, p in enumerate(prepared) if p.idempotency_key} - {
            ids[i] for i in taken
        }
        fresh = [(rid, p) for rid, p in unique if rid not in held]
        if not fresh:
            return
        quota = self.tenants.quota(tenant) if self.tenants else None
        created = now_ms()
        call = self.admission.call(tenant, quota, fresh, created)
        (reply,) = yield Pipeline([call.queue])
        refused = call.parse(reply)
        if refused == "max_pending" and (yield from self._heal_open(tenant, created)):
            call = self.admission.call(tenant, quota, fresh, created)
            (reply,) = yield Pipeline([call.queue])
            refused = call.parse(reply)
        if refused == "ok":
            return
        if taken:
            yield Pipeline([self._unclaim(prepared[i], ids[i]).queue for i in taken])
        raise self.admission.refused(tenant, quota, refused, len(fresh), created)

    def _heal_open(self, tenant: str, now: int) -> Flow[int]:
        """Drop what crashes left in the tenant's `open` set, so `max_pending` does not refuse
        early: ids admitted by a producer that died before `intake` (no record) and requests
        cancelled by one that died before giving them back. Only entries older than
        OPEN_GRACE_MS (an intake follows its admission within one round trip); succeeded and
        failed ones stay, the worker's `spend` takes them off as it counts their cost.
        Returns how many were dropped; runs only when `max_pending` refused."""
        open_key = self.keys.tenant_open(tenant)
        (old,) = yield Pipeline(
            [methodcaller("zrangebyscore", open_key, "-inf", now - OPEN_GRACE_MS, 0, HEAL_LIMIT)]
        )
        rids = [r.decode() for r in old]
        if not rids:
            return 0
        states = yield Pipeline([methodcaller("hget", self.keys.req(rid), "state") for rid in rids])
        gone = [rid for rid, st in zip(rids, states, strict=True) if st in (None, CANCELLED_B)]
        if gone:
            rows = [commands.SpendRow(rid) for rid in gone]
            yield Pipeline([commands.spend(self.keys, tenant, "-", rows, 0).queue])
        return len(gone)

    def _claim_keys(
        self, prepared: list[Prepared], keyed: list[int], ids: list[str], numbered: bool
    ) -> Flow[list[int]]:
        """Take each idempotency key for its new id, or point the item at the key's holder;
        returns the items whose key this call took. On a conflict, give back every key this
        call took and raise."""
        taken: list[int] = []
        conflict: tuple[int, str] | None = None
        for start in range(0, len(keyed), CHUNK):
            part = keyed[start : start + CHUNK]
            calls = [self._idem(prepared[i], ids[i]) for i in part]
            replies = yield Pipeline([c.queue for c in calls])
            for i, call, reply in zip(part, calls, replies, strict=True):
                held = call.parse(reply)
                if held.taken:
                    taken.append(i)
                elif held.conflict:
                    conflict = conflict or (i, held.owner)
                else:
                    ids[i] = held.owner
            if conflict:
                break
        if conflict is None:
            return taken
        if taken:
            gives = [self._unclaim(prepared[i], ids[i]) for i in taken]
            yield Pipeline([c.queue for c in gives])
        i, owner = conflict
        where = f"item {i}: " if numbered else ""
        raise errors.IdempotencyConflictError(
            f"{where}idempotency key {prepared[i].idempotency_key!r} was already used for "
            f"request {owner} with a different endpoint, body, callback or metadata"
        )

    def _idem(self, p: Prepared, rid: str) -> commands.Call[commands.IdemReply]:
        return commands.idem(self.keys, p.idem_scope, rid, p.fingerprint, self.retention_s)

    def _unclaim(self, p: Prepared, rid: str) -> commands.Call[bool]:
        return commands.unclaim(self.keys, p.idem_scope, rid, p.fingerprint)

    def _intake(self, chunk: list[tuple[str, Prepared]]) -> Flow[int]:
        """The groups' entries first, then one `intake` per group, in one round trip.

        Listing the groups before their requests means a crash in between leaves at most a
        group without requests (harmless; the sweep retires it). A group that `intake` found
        unregistered (new, or retired by a sweep while this call was on its way) is listed
        again after its requests, which closes that race. Returns how many it stored.
        """
        created = now_ms()
        rows: dict[str, list[commands.IntakeRow]] = {}
        entries: dict[str, bytes] = {}
        for rid, p in chunk:
            entries[p.tag] = self._entry(p)
            rows.setdefault(p.tag, []).append(
                commands.IntakeRow(rid, p.line_bytes, p.body_json, p.callback_json,
                                   p.metadata_json, p.idempotency_key, p.tenant)
            )  # fmt: skip
        calls = [(tag, commands.intake(self.keys, tag, created, r)) for tag, r in rows.items()]
        replies = yield Pipeline(
            [methodcaller("hset", self.keys.groups, mapping=entries), *(c.queue for _, c in calls)]
        )
        outcomes = {
            tag: call.parse(reply) for (tag, call), reply in zip(calls, replies[1:], strict=True)
        }
        relisted = {tag: entries[tag] for tag, (_stored, unlisted) in outcomes.items() if unlisted}
        if relisted:
            yield Pipeline([methodcaller("hset", self.keys.groups, mapping=relisted)])
        return sum(stored for stored, _unlisted in outcomes.values())

    def _entry(self, p: Prepared) -> bytes:
        entry = self._listed.get(p.tag)
        if entry is None:
            meta = {"profile": p.profile, "endpoint": p.endpoint, "model": p.model}
            self._meta[p.tag] = meta
            entry = self._listed[p.tag] = orjson.dumps(meta)
        return entry

    # --- reads ---

    def _req_keys(self, ids: Sequence[str]) -> list[str]:
        """Every id's record key, checked before anything is read."""
        try:
            return [self.keys.req(rid) for rid in ids]
        except (ValueError, TypeError, AttributeError) as exc:
            raise errors.RequestNotFoundError(str(exc)) from None

    def _records(
        self, ids: Sequence[str], fields: Sequence[str]
    ) -> Flow[list[tuple[list[bytes | None], dict[str, str]] | None]]:
        """(field values, group meta) per id, None where the record does not exist; one
        round trip per CHUNK ids, the unknown groups' entries read in the same one."""
        keys = self._req_keys(ids)
        out: list[tuple[list[bytes | None], dict[str, str]] | None] = []
        for start in range(0, len(ids), CHUNK):
            part, part_keys = ids[start : start + CHUNK], keys[start : start + CHUNK]
            unknown = sorted({tag_of(rid) for rid in part} - self._meta.keys())
            ops = [methodcaller("hmget", key, fields) for key in part_keys]
            if unknown:
                ops.append(methodcaller("hmget", self.keys.groups, unknown))
            replies = yield Pipeline(ops)
            if unknown:
                for tag, raw in zip(unknown, replies[-1], strict=True):
                    if raw is not None:
                        self._meta[tag] = orjson.loads(raw)
            for rid, values in zip(part, replies[: len(part)], strict=True):
                if values[0] is None:
                    out.append(None)
                    continue
                meta = self._meta.get(tag_of(rid))
                if meta is None:
                    raise errors.RequestNotFoundError(
                        f"the group of request {rid} is unknown to this Redis"
                    )
                out.append((values, meta))
        return out

    def statuses(self, ids: Sequence[str]) -> Flow[list[RequestStatus | None]]:
        rows = yield from self._records(ids, STATUS_FIELDS)
        return [
            None if row is None else status_from_fields(rid, row[1], row[0])
            for rid, row in zip(ids, rows, strict=True)
        ]

    def results(self, ids: Sequence[str]) -> Flow[list[dict[str, Any] | None]]:
        rows = yield from self._records(ids, RESULT_FIELDS)
        return [
            result_payload(rid, row[1], row[0])
            if row is not None and row[0][0] is not None and row[0][0].decode() in FINAL_STATES
            else None
            for rid, row in zip(ids, rows, strict=True)
        ]

    def status(self, rid: str) -> Flow[RequestStatus]:
        (found,) = yield from self.statuses([rid])
        if found is None:
            raise self._not_found(rid)
        return found

    def result(self, rid: str, timeout: float | None) -> Flow[dict[str, Any]]:
        yield from self.wait([rid], timeout, None)
        (payload,) = yield from self.results([rid])
        if payload is None:
            raise self._not_found(rid)
        return payload

    @staticmethod
    def _not_found(rid: str) -> errors.RequestNotFoundError:
        return errors.RequestNotFoundError(
            f"request {rid} does not exist (never stored, or expired after retention)"
        )

    def wait(
        self,
        ids: Sequence[str],
        timeout: float | None,
        progress: Callable[[StateCounts], None] | None,
    ) -> Flow[StateCounts]:
        """Until every request is final (or its record is gone): sleeps on the groups' `done`
        channels, re-reading (pipelined) only the states of requests still open, when woken
        or every RECHECK_S; the gaps stretch so re-reading a huge wait stays a small share of
        the time. `progress` gets the counts after each read. ResultTimeoutError after
        `timeout` seconds."""
        self._req_keys(ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        recheck = RECHECK_S if progress is None else PROGRESS_RECHECK_S
        still = list(dict.fromkeys(ids))
        closed: Counter[str] = Counter()
        yield Listen(sorted({self.keys.done(tag_of(rid)) for rid in still}))
        while True:
            started = time.monotonic()
            states: list[bytes | None] = []
            for start in range(0, len(still), CHUNK):
                part = still[start : start + CHUNK]
                states += yield Pipeline(
                    [methodcaller("hget", self.keys.req(rid), "state") for rid in part]
                )
            open_: list[str] = []
            in_batch = 0
            for rid, raw in zip(still, states, strict=True):
                state = None if raw is None else raw.decode()
                if state is None:
                    closed["missing"] += 1
                elif state in FINAL_STATES:
                    closed[state] += 1
                else:
                    open_.append(rid)
                    in_batch += state == IN_BATCH
            still = open_
            counts = StateCounts(
                pending=len(still) - in_batch,
                in_batch=in_batch,
                succeeded=closed["succeeded"],
                failed=closed["failed"],
                cancelled=closed["cancelled"],
                missing=closed["missing"],
            )
            if progress is not None:
                progress(counts)
            if not still:
                return counts
            cost = READ_SHARE * (time.monotonic() - started)
            pause = max(recheck, cost)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    what = (
                        f"request {still[0]} is" if len(ids) == 1 else f"{len(still)} requests are"
                    )
                    raise errors.ResultTimeoutError(f"{what} not final after {timeout} s")
                pause = min(pause, left)
            yield Pause(pause, min(cost, pause))

    # --- cancel ---

    def _release(self, rid: str) -> Flow[None]:
        """A cancelled request of a tenant no longer counts as pending (nothing to bill)."""
        (tenant,) = yield Pipeline([methodcaller("hget", self.keys.req(rid), "tenant")])
        if tenant:
            name = tenant.decode()
            call = commands.spend(self.keys, name, "-", [commands.SpendRow(rid)], 0)
            yield Pipeline([call.queue])

    def cancel(self, rid: str) -> Flow[None]:
        self._req_keys([rid])
        call = commands.cancel(self.keys, rid, now_ms(), self.retention_s * 1000)
        (reply,) = yield Pipeline([call.queue])
        state = call.parse(reply)
        if state == "ok":
            yield from self._release(rid)
            return
        if state == "cancelled":
            return
        if state == "":
            raise errors.RequestNotFoundError(f"request {rid} does not exist")
        if state in FINAL_STATES:
            raise errors.CancelError(f"request {rid} is already final ({state})")
        raise errors.CancelError(
            f"request {rid} is in a batch that was already submitted to the provider ({state}); "
            "a request can be cancelled only until its batch is submitted"
        )
