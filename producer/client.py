"""What a web app imports: submit, submit_many, status, result and cancel, sync and asyncio.

Intake is one round trip for a request (MULTI/EXEC: record, pending queue, byte counter) and
one pipelined round trip per 1,000 for `submit_many`. A web app never imports Celery.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
import redis
import redis.asyncio as aredis
from batchrelay.config import Settings, load_settings
from batchrelay.producer import errors
from batchrelay.producer.callbacks import CeleryTask, Webhook
from batchrelay.producer.intake import Intake, Prepared
from batchrelay.producer.keys import Keys, new_request_id, tag_of
from batchrelay.producer.records import (
    FINAL_STATES,
    RESULT_FIELDS,
    STATUS_FIELDS,
    RequestStatus,
    now_ms,
    result_payload,
    status_from_fields,
)
from redis.exceptions import NoScriptError

SUBMIT_CHUNK = 1000
# A pubsub message can be lost (Redis restart, reconnect); result() re-reads the record this
# often while it waits, which is a safety net, not a busy poll.
RESULT_RECHECK_S = 5.0
RELAY_LUA = resources.files("batchrelay.producer").joinpath("relay.lua").read_text()


@dataclass(frozen=True)
class SubmitItem:
    endpoint: str
    body: Mapping[str, Any]
    callback: Webhook | CeleryTask | None = None
    idempotency_key: str | None = None
    metadata: Mapping[str, Any] | None = None


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


IntakeCall = tuple[str, list[str], list[Any]]  # group tag, script keys, script args


class _Core:
    """The I/O-free half shared by the sync and asyncio clients."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.intake = Intake(settings)
        self.retention_s = settings.result_retention_s
        self.group_meta: dict[str, dict[str, str]] = {}
        self._group_json: dict[str, bytes] = {}

    def groups_of(self, prepared: Iterable[Prepared]) -> dict[str, bytes]:
        """The groups list entries (tag -> JSON meta) of the groups these requests go to."""
        out: dict[str, bytes] = {}
        for p in prepared:
            if p.tag not in out:
                entry = self._group_json.get(p.tag)
                if entry is None:
                    meta = {"profile": p.profile, "endpoint": p.endpoint, "model": p.model}
                    self.group_meta[p.tag] = meta
                    entry = self._group_json[p.tag] = orjson.dumps(meta)
                out[p.tag] = entry
        return out

    def intake_pipeline(
        self, pipe: Any, sha: str, groups: dict[str, bytes], calls: list[IntakeCall]
    ) -> None:
        """The groups list entries first, then one `intake` per group, in one round trip.

        Listing the groups before their requests means a crash in between leaves at most a
        group without requests (harmless; the sweep retires it). EVALSHA is sent raw: a
        registered Script in a pipeline would first ask SCRIPT EXISTS, a second round trip.
        """
        pipe.hset(self.keys.groups, mapping=groups)
        for _tag, keys, args in calls:
            pipe.evalsha(sha, len(keys), *keys, *args)

    def relisted(
        self, groups: dict[str, bytes], calls: list[IntakeCall], replies: list[Any]
    ) -> dict[str, bytes]:
        """Groups that `intake` found unregistered: new, or retired by a sweep while this
        call was on its way. Listing them again (after their requests) closes that race."""
        return {
            tag: groups[tag]
            for (tag, _keys, _args), reply in zip(calls, replies[1:], strict=True)
            if int(reply[1])
        }

    def meta_from(self, tag: str, raw: bytes | None) -> dict[str, str]:
        if raw is None:
            raise errors.RequestNotFoundError(f"group {tag} is unknown to this Redis")
        meta = orjson.loads(raw)
        self.group_meta[tag] = meta
        return meta

    def intake_calls(self, batch: list[tuple[Prepared, str]]) -> list[IntakeCall]:
        """One `intake` script call per group of the chunk: it stores each request's record,
        pending entry and bytes atomically in the group's hash slot, and skips a request whose
        record exists (a reused idempotency key), so it is safe to repeat."""
        created = now_ms()
        by_group: dict[str, list[Any]] = {}
        for p, rid in batch:
            by_group.setdefault(p.tag, []).extend(
                (rid, p.line_bytes, p.body_json, p.callback_json, p.metadata_json,
                 p.idempotency_key)
            )  # fmt: skip
        return [
            (
                tag,
                [self.keys.pending(tag), self.keys.pbytes(tag), self.keys.registered(tag)],
                ["intake", "-", self.keys.req_prefix(tag), created, *values],
            )
            for tag, values in by_group.items()
        ]

    def prepare_many(self, items: Iterable[SubmitItem | Mapping[str, Any]]) -> list[Prepared]:
        prepared = []
        for i, raw in enumerate(items):
            item = _item(raw)
            try:
                prepared.append(
                    self.intake.prepare(
                        item.endpoint,
                        item.body,
                        callback=item.callback,
                        idempotency_key=item.idempotency_key,
                        metadata=item.metadata,
                    )
                )
            except errors.BatchRelayError as exc:
                raise type(exc)(f"item {i}: {exc}") from None
        return prepared

    def stage_idempotency(self, pipe: Any, keyed: list[tuple[int, Prepared]], ids: list[str]):
        """Claim each key for its new id (SET NX) and read back who owns it."""
        for i, p in keyed:
            key = self.keys.idem(p.idempotency_key)
            pipe.set(key, f"{ids[i]} {p.body_hash}", nx=True, ex=self.retention_s)
            pipe.get(key)

    def apply_idempotency(
        self, keyed: list[tuple[int, Prepared]], ids: list[str], replies: list[Any]
    ) -> list[tuple[Prepared, str]]:
        """Point reused keys at their first request (in `ids`). A key reused with another
        body raises before anything is stored; the caller then gives back the keys this call
        took (returned in the exception's `taken`)."""
        taken = [(p, ids[i]) for n, (i, p) in enumerate(keyed) if replies[2 * n]]
        for n, (i, p) in enumerate(keyed):
            if replies[2 * n]:
                continue
            rid, digest = replies[2 * n + 1].decode().split(" ", 1)
            if digest != p.body_hash:
                exc = errors.IdempotencyConflictError(
                    f"idempotency key {p.idempotency_key!r} was already used for request {rid} "
                    "with a different endpoint or body"
                )
                exc.taken = taken  # type: ignore[attr-defined]
                raise exc
            ids[i] = rid
        return taken

    def unclaim_args(self, p: Prepared, rid: str) -> tuple[list[str], list[Any]]:
        """Give back an idempotency key this call took, if it still points at `rid`."""
        return [self.keys.idem(p.idempotency_key)], ["unclaim", "-", f"{rid} {p.body_hash}"]

    def cancel_args(self, rid: str) -> tuple[list[str], list[Any]]:
        tag = tag_of(rid)
        keys = [
            self.keys.pending(tag),
            self.keys.pbytes(tag),
            self.keys.req(rid),
            self.keys.alive(tag),
        ]
        return keys, [
            "cancel",
            self.keys.done(tag),
            rid,
            now_ms(),
            self.retention_s * 1000,
            self.keys.batch_prefix(tag),
        ]

    def req_key(self, rid: str) -> str:
        try:
            return self.keys.req(rid)
        except ValueError as exc:
            raise errors.RequestNotFoundError(str(exc)) from None

    def require(self, rid: str, values: list[bytes | None]) -> list[bytes | None]:
        if values[0] is None:
            raise errors.RequestNotFoundError(
                f"request {rid} does not exist (never stored, or expired after retention)"
            )
        return values

    def cancelled_or_raise(self, rid: str, outcome: bytes | str) -> None:
        state = outcome.decode() if isinstance(outcome, bytes) else outcome
        if state in ("ok", "cancelled"):
            return
        if state == "":
            raise errors.RequestNotFoundError(f"request {rid} does not exist")
        if state in FINAL_STATES:
            raise errors.CancelError(f"request {rid} is already final ({state})")
        raise errors.CancelError(
            f"request {rid} is in a batch that was already submitted to the provider ({state}); "
            "a request can be cancelled only until its batch is submitted"
        )


class BatchRelay:
    """Synchronous client. `BatchRelay.from_env()` reads `BATCHRELAY_*` settings."""

    def __init__(self, settings: Settings | None = None, *, client: redis.Redis | None = None):
        self._core = _Core(settings or load_settings())
        self.settings = self._core.settings
        self.redis = client or redis.Redis.from_url(self.settings.redis_url.get_secret_value())
        self._script = self.redis.register_script(RELAY_LUA)

    @classmethod
    def from_env(cls) -> BatchRelay:
        return cls(load_settings())

    def close(self) -> None:
        self.redis.close()

    def __enter__(self) -> BatchRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(
        self,
        endpoint: str,
        body: Mapping[str, Any],
        *,
        callback: Webhook | CeleryTask | None = None,
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Store one request durably and return its id (valid as an Anthropic custom_id)."""
        p = self._core.intake.prepare(
            endpoint, body, callback=callback, idempotency_key=idempotency_key, metadata=metadata
        )
        return self._store([p])[0]

    def submit_many(self, items: Iterable[SubmitItem | Mapping[str, Any]]) -> list[str]:
        """Check every item first (one bad item stores nothing), then store them pipelined."""
        prepared = self._core.prepare_many(items)
        ids: list[str] = []
        for start in range(0, len(prepared), SUBMIT_CHUNK):
            ids.extend(self._store(prepared[start : start + SUBMIT_CHUNK]))
        return ids

    def _store(self, prepared: list[Prepared]) -> list[str]:
        core = self._core
        ids = [new_request_id(p.tag) for p in prepared]
        keyed = [(i, p) for i, p in enumerate(prepared) if p.idempotency_key]
        if keyed:
            self._resolve_idempotency(keyed, ids)
        unique = dict(zip(ids, prepared, strict=True))  # a key repeated in one call: stored once
        groups = core.groups_of(unique.values())
        calls = core.intake_calls([(p, rid) for rid, p in unique.items()])
        try:
            replies = self._intake(groups, calls)
        except NoScriptError:  # a restarted or flushed Redis: load it; intake is repeatable
            self.redis.script_load(RELAY_LUA)
            replies = self._intake(groups, calls)
        relisted = core.relisted(groups, calls, replies)
        if relisted:
            self.redis.hset(core.keys.groups, mapping=relisted)
        return ids

    def _intake(self, groups: dict[str, bytes], calls: list[IntakeCall]) -> list:
        pipe = self.redis.pipeline(transaction=False)
        self._core.intake_pipeline(pipe, self._script.sha, groups, calls)
        return pipe.execute()

    def _resolve_idempotency(self, keyed: list[tuple[int, Prepared]], ids: list[str]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        self._core.stage_idempotency(pipe, keyed, ids)
        replies = pipe.execute()
        try:
            self._core.apply_idempotency(keyed, ids, replies)
        except errors.IdempotencyConflictError as exc:
            pipe = self.redis.pipeline(transaction=False)
            for p, rid in exc.taken:  # type: ignore[attr-defined]
                keys, args = self._core.unclaim_args(p, rid)
                self._script(keys=keys, args=args, client=pipe)
            pipe.execute()
            raise

    def _meta(self, request_id: str) -> dict[str, str]:
        tag = tag_of(request_id)
        meta = self._core.group_meta.get(tag)
        return meta or self._core.meta_from(tag, self.redis.hget(self._core.keys.groups, tag))

    def status(self, request_id: str) -> RequestStatus:
        values = self.redis.hmget(self._core.req_key(request_id), STATUS_FIELDS)
        values = self._core.require(request_id, values)
        return status_from_fields(request_id, self._meta(request_id), values)

    def cancel(self, request_id: str) -> None:
        """Cancel a request that is still pending; CancelError once its batch is claimed."""
        self._core.req_key(request_id)
        keys, args = self._core.cancel_args(request_id)
        self._core.cancelled_or_raise(request_id, self._script(keys=keys, args=args))

    def result(self, request_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the request is final and return its result payload (the webhook body).

        Waits on a pub/sub message, not a poll loop; raises ResultTimeoutError on timeout.
        """
        key = self._core.req_key(request_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self._core.keys.done(tag_of(request_id)))
        try:
            while True:
                values = self.redis.hmget(key, RESULT_FIELDS)
                self._core.require(request_id, values)
                if values[0].decode() in FINAL_STATES:
                    return result_payload(request_id, self._meta(request_id), values)
                wait = RESULT_RECHECK_S
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        raise errors.ResultTimeoutError(
                            f"request {request_id} is not final after {timeout} s"
                        )
                pubsub.get_message(timeout=wait)
        finally:
            pubsub.close()


class AsyncBatchRelay:
    """The same API for asyncio applications."""

    def __init__(self, settings: Settings | None = None, *, client: aredis.Redis | None = None):
        self._core = _Core(settings or load_settings())
        self.settings = self._core.settings
        self.redis = client or aredis.Redis.from_url(self.settings.redis_url.get_secret_value())
        self._script = self.redis.register_script(RELAY_LUA)

    @classmethod
    def from_env(cls) -> AsyncBatchRelay:
        return cls(load_settings())

    async def aclose(self) -> None:
        await self.redis.aclose()

    async def __aenter__(self) -> AsyncBatchRelay:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def submit(
        self,
        endpoint: str,
        body: Mapping[str, Any],
        *,
        callback: Webhook | CeleryTask | None = None,
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        # Checking a webhook URL resolves its host: off the event loop.
        p = await asyncio.to_thread(
            self._core.intake.prepare,
            endpoint,
            body,
            callback=callback,
            idempotency_key=idempotency_key,
            metadata=metadata,
        )
        return (await self._store([p]))[0]

    async def submit_many(self, items: Iterable[SubmitItem | Mapping[str, Any]]) -> list[str]:
        prepared = await asyncio.to_thread(self._core.prepare_many, list(items))
        ids: list[str] = []
        for start in range(0, len(prepared), SUBMIT_CHUNK):
            ids.extend(await self._store(prepared[start : start + SUBMIT_CHUNK]))
        return ids

    async def _store(self, prepared: list[Prepared]) -> list[str]:
        core = self._core
        ids = [new_request_id(p.tag) for p in prepared]
        keyed = [(i, p) for i, p in enumerate(prepared) if p.idempotency_key]
        if keyed:
            await self._resolve_idempotency(keyed, ids)
        unique = dict(zip(ids, prepared, strict=True))  # a key repeated in one call: stored once
        groups = core.groups_of(unique.values())
        calls = core.intake_calls([(p, rid) for rid, p in unique.items()])
        try:
            replies = await self._intake(groups, calls)
        except NoScriptError:  # a restarted or flushed Redis: load it; intake is repeatable
            await self.redis.script_load(RELAY_LUA)
            replies = await self._intake(groups, calls)
        relisted = core.relisted(groups, calls, replies)
        if relisted:
            await self.redis.hset(core.keys.groups, mapping=relisted)
        return ids

    async def _intake(self, groups: dict[str, bytes], calls: list[IntakeCall]) -> list:
        pipe = self.redis.pipeline(transaction=False)
        self._core.intake_pipeline(pipe, self._script.sha, groups, calls)
        return await pipe.execute()

    async def _resolve_idempotency(self, keyed: list[tuple[int, Prepared]], ids: list[str]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        self._core.stage_idempotency(pipe, keyed, ids)
        replies = await pipe.execute()
        try:
            self._core.apply_idempotency(keyed, ids, replies)
        except errors.IdempotencyConflictError as exc:
            pipe = self.redis.pipeline(transaction=False)
            for p, rid in exc.taken:  # type: ignore[attr-defined]
                keys, args = self._core.unclaim_args(p, rid)
                await self._script(keys=keys, args=args, client=pipe)
            await pipe.execute()
            raise

    async def _meta(self, request_id: str) -> dict[str, str]:
        tag = tag_of(request_id)
        meta = self._core.group_meta.get(tag)
        return meta or self._core.meta_from(tag, await self.redis.hget(self._core.keys.groups, tag))

    async def status(self, request_id: str) -> RequestStatus:
        values = await self.redis.hmget(self._core.req_key(request_id), STATUS_FIELDS)
        values = self._core.require(request_id, values)
        return status_from_fields(request_id, await self._meta(request_id), values)

    async def cancel(self, request_id: str) -> None:
        self._core.req_key(request_id)
        keys, args = self._core.cancel_args(request_id)
        self._core.cancelled_or_raise(request_id, await self._script(keys=keys, args=args))

    async def result(self, request_id: str, timeout: float | None = None) -> dict[str, Any]:
        key = self._core.req_key(request_id)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self._core.keys.done(tag_of(request_id)))
        try:
            while True:
                values = await self.redis.hmget(key, RESULT_FIELDS)
                self._core.require(request_id, values)
                if values[0].decode() in FINAL_STATES:
                    return result_payload(request_id, await self._meta(request_id), values)
                wait = RESULT_RECHECK_S
                if deadline is not None:
                    wait = min(wait, deadline - loop.time())
                    if wait <= 0:
                        raise errors.ResultTimeoutError(
                            f"request {request_id} is not final after {timeout} s"
                        )
                await pubsub.get_message(timeout=wait)
        finally:
            await pubsub.aclose()
