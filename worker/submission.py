"""Turning a claimed batch into a provider batch, at most once (docs/architecture.md, promise 4).

A batch first gets a place: a slot and enqueued tokens at its profile, or at the first of the
group's fallbacks with room (see `capacity`); with none, it waits and is tried again. Every
attempt then asks the provider whether a batch for this claim already exists (a worker may
have died between create and recording it); only then does it upload and create. Once a
create may have started, the batch is pinned to that profile: it is reconciled there and
never moved. The input is streamed from Redis to a spool file, so memory does not grow with
size.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import orjson

from batchrelay.config import ProviderProfile
from batchrelay.producer.keys import tag_of
from batchrelay.worker import capacity
from batchrelay.worker.context import CLAIMED, SUBMITTED, UPLOADED, Relay
from batchrelay.worker.packing import iter_item_ids, iter_items, write_input
from batchrelay.worker.providers import (
    BatchAdapter,
    Claim,
    ProviderBatch,
    ProviderError,
    ReconcilePending,
)
from batchrelay.worker.providers.http import retry_delay_s
from batchrelay.worker.settling import settle

log = logging.getLogger(__name__)


def submit_batch(relay: Relay, bid: str) -> str:
    """Submit one claimed batch; returns what happened (for logs and tests)."""
    with relay.batch_lease(bid) as held:
        if not held:
            return "busy"
        rec = relay.batch(bid)
        if not rec:
            relay.redis.zrem(relay.keys.inflight(tag_of(bid)), bid)
            return "missing"
        if rec["state"] not in (CLAIMED, UPLOADED):
            return rec["state"]
        pinned = rec["state"] == UPLOADED or bool(rec.get("create_started"))
        profile = relay.settings.profile(rec["profile"]) if pinned else place(relay, rec)
        if profile is None:
            return wait(relay, bid, "no candidate profile has a free slot or tokens")
        adapter = relay.adapter(profile.name)
        try:
            # Only a batch whose create may have started can exist at the provider already.
            found = find_pinned(relay, adapter, rec) if pinned else None
            if found is not None:
                log.warning(
                    "batch %s already exists at %s as %s; adopting", bid, profile.name, found.id
                )
                reserve(relay, profile, rec, force=True)
                record_submitted(relay, bid, profile.name, found)
                return "adopted"
            if pinned and not reserve(relay, profile, rec):
                return wait(relay, bid, f"{profile.name} has no free slot or tokens")
            created = create(relay, adapter, rec)
        except ReconcilePending as exc:
            return wait(relay, bid, str(exc))
        except EmptyBatch:
            finish_empty(relay, bid, rec)
            return "empty"
        except ProviderError as exc:
            if exc.retryable:
                raise
            refuse(relay, bid, rec, exc)
            return "refused"
        record_submitted(relay, bid, profile.name, created)
        return "submitted"


class EmptyBatch(Exception):
    """Every request left the batch (a refusal cut short by a crash re-pooled them)."""


def find_pinned(relay: Relay, adapter: BatchAdapter, rec: dict[str, str]) -> ProviderBatch | None:
    """Reconcile; a listing the provider refuses (no list endpoint, a key without the right)
    must not look like "not created", so the batch waits and says why."""
    try:
        return adapter.find(claim_of(relay, rec))
    except ProviderError as exc:
        if exc.retryable:
            raise
        relay.set_batch(rec["id"], error=f"cannot reconcile: {exc}")
        raise ReconcilePending(f"cannot list batches to reconcile: {exc}") from exc


def finish_empty(relay: Relay, bid: str, rec: dict[str, str]) -> None:
    relay.finish_batch(bid, error="no request left in the batch")
    capacity.release(relay, rec["profile"], rec["model"], bid)


def place(relay: Relay, rec: dict[str, str]) -> ProviderProfile | None:
    """Reserve room for a batch not yet sent anywhere: at its claim's profile if it has room,
    else at the first candidate that fits the batch and has room; the record names the
    profile it now goes to (and the reservation elsewhere is given back)."""
    bid, model, claimed_at = rec["id"], rec["model"], rec["profile"]
    primary = relay.group_meta(tag_of(bid)).get("profile") or claimed_at
    chain = capacity.candidates(relay.settings, primary, rec["endpoint"], model)
    chain.sort(key=lambda p: p.name != claimed_at)
    n, size = int(rec["n"]), int(rec["bytes"])
    for profile in chain:
        if n > profile.max_requests_per_batch or size > profile.max_bytes_per_batch:
            continue
        if not reserve(relay, profile, rec):
            continue
        if profile.name != claimed_at:
            capacity.release(relay, claimed_at, model, bid)
            log.info("batch %s goes to fallback %s instead of %s", bid, profile.name, claimed_at)
        relay.set_batch(bid, profile=profile.name)
        rec["profile"] = profile.name
        return profile
    capacity.release(relay, claimed_at, model, bid)
    return None


def reserve(
    relay: Relay, profile: ProviderProfile, rec: dict[str, str], *, force: bool = False
) -> bool:
    """Reserve the batch's estimated tokens at `profile`, counting them first if the batch was
    counted differently; the record keeps the count."""
    bid, model = rec["id"], rec["model"]
    key = capacity.estimate_key(profile, model)
    if rec.get("estimate") == key and rec.get("tokens"):
        tokens = int(rec["tokens"])
    else:
        bodies = (body for _, body in iter_items(relay, bid))
        tokens = capacity.estimate(profile, model, int(rec["n"]), int(rec["bytes"]), bodies)
        relay.set_batch(bid, tokens=tokens, estimate=key)
        rec.update(tokens=str(tokens), estimate=key)
    return capacity.reserve(relay, profile, bid, model, tokens, force=force)


def wait(relay: Relay, bid: str, why: str) -> str:
    """Leave the batch claimed and try it again after a poll interval."""
    log.info("batch %s waits: %s", bid, why)
    relay.schedule(bid, relay.now() + int(relay.settings.poll_interval_s * 1000))
    return "waiting"


def claim_of(relay: Relay, rec: dict[str, str]) -> Claim:
    """What the adapter may use to recognise this claim's batch at its profile."""
    bid, profile = rec["id"], rec["profile"]
    since_ms = int(rec.get("create_started") or rec["claimed"])
    registry = relay.keys.pbatches(profile)

    def owns(custom_id: str) -> bool:
        try:
            key = relay.keys.req(custom_id)
        except ValueError:
            return False
        # Not the state: a request cancelled after its line was written is still in the
        # provider's batch, and must not make our own batch look foreign.
        return relay.redis.hget(key, "batch") == bid.encode()

    def recorded(provider_id: str) -> str | None:
        owner = relay.redis.hget(registry, provider_id)
        return owner.decode() if owner else None

    n = int(rec.get("lines") or rec["n"])
    return Claim(
        bid=bid,
        since=since_ms / 1000,
        n=n,
        owns=owns,
        recorded=recorded,
        input_ref=rec.get("file_id") or None,
    )


def create(relay: Relay, adapter: BatchAdapter, rec: dict[str, str]) -> ProviderBatch:
    bid = rec["id"]
    with tempfile.TemporaryDirectory(prefix="batchrelay-", dir=relay.settings.spool_dir) as tmp:
        path: Path | None = None
        input_ref = rec.get("file_id") or None
        if not input_ref:
            path = Path(tmp) / f"{bid}.jsonl"
            with path.open("wb") as out:
                lines = write_input(relay, adapter, bid, rec["endpoint"], out)
            relay.set_batch(bid, lines=lines)
            rec["lines"] = str(lines)
            if lines == 0 and not rec.get("create_started"):
                raise EmptyBatch(bid)
        if not input_ref:
            assert path is not None
            if adapter.uploads(path.stat().st_size):
                input_ref = adapter.upload(path, model=rec["model"])
                relay.set_batch(bid, file_id=input_ref, state=UPLOADED)
                rec["file_id"] = input_ref  # reconciling below may match on it
        if not rec.get("create_started"):
            # From here the batch may exist at this profile: it stays pinned to it.
            rec["create_started"] = str(relay.now())
            relay.set_batch(bid, create_started=rec["create_started"])
        attempts = relay.settings.http_max_retries
        for attempt in range(attempts + 1):
            try:
                return adapter.create(
                    input_ref=input_ref,
                    path=path,
                    endpoint=rec["endpoint"],
                    model=rec["model"],
                    bid=bid,
                )
            except ProviderError as exc:
                if attempt > 0 and not exc.retryable:
                    # An earlier attempt may have created it after all: reconcile, don't refuse.
                    raise ProviderError(str(exc), status=exc.status, retryable=True) from exc
                if not exc.retryable or attempt == attempts or exc.status == 429:
                    # A 429 is a refusal (nothing was created) that the call already retried
                    # with the provider's Retry-After: leave it to a later tick.
                    raise
                log.warning("create of batch %s failed (%s); reconciling before a retry", bid, exc)
                time.sleep(retry_delay_s(exc.retry_after, attempt))
                found = adapter.find(claim_of(relay, rec))
                if found is not None:
                    return found
    raise AssertionError("unreachable")


def record_submitted(relay: Relay, bid: str, profile: str, pb: ProviderBatch) -> None:
    now = relay.now()
    # The registry first: a crash after it leaves the provider batch recognisably ours.
    relay.redis.hset(relay.keys.pbatches(profile), pb.id, bid)
    relay.set_batch(
        bid,
        state=SUBMITTED,
        stuck="",
        profile=profile,
        pbatch=pb.id,
        pstatus=pb.status,
        pstatus_since=now,
        submitted=now,
        interval=relay.settings.poll_interval_s,
        **({"file_id": pb.input_ref} if pb.input_ref else {}),
    )
    relay.schedule(bid, now + int(relay.settings.poll_interval_s * 1000))
    log.info("batch %s submitted to %s as %s (%s)", bid, profile, pb.id, pb.status)


def refuse(relay: Relay, bid: str, rec: dict[str, str], exc: ProviderError) -> None:
    """The provider will not take this batch (a 4xx on upload or create): every request goes
    back to pending with one attempt used, and ends failed once attempts run out."""
    log.error("provider refused batch %s: %s", bid, exc)
    error = orjson.dumps(
        {"code": "batch_refused", "message": str(exc), "status_code": exc.status, "body": None}
    )
    for ids in iter_item_ids(relay, bid):
        settle(relay, bid, "", [(rid, "retry", 0, error) for rid in ids])
    relay.finish_batch(bid, error=str(exc))
    capacity.release(relay, rec["profile"], rec["model"], bid)
    relay.redis.set(
        relay.keys.backoff(tag_of(bid)), 1, px=int(relay.settings.poll_interval_s * 1000)
    )
