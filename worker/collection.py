"""Collecting a finished batch: stream its result files and settle every request.

Success lines store the response; error lines are final or go back to pending by class; lines
missing from both files go back to pending; a batch that failed validation fails the lines it
names and re-pools the rest. Settling is idempotent, so a collection cut off half-way (a
dropped download, a killed worker) simply runs again.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator

import orjson

from batchrelay.producer.keys import tag_of
from batchrelay.worker import capacity
from batchrelay.worker.context import COLLECTING, DONE, SUBMITTED, Relay
from batchrelay.worker.packing import iter_item_ids
from batchrelay.worker.providers import ProviderBatch, ProviderError
from batchrelay.worker.providers.base import (
    GONE,
    MISSING,
    NEVER_RAN,
    TOKEN_LIMIT,
    batch_error,
    line_error,
)
from batchrelay.worker.settling import Row, settle_all

log = logging.getLogger(__name__)


def collect_batch(relay: Relay, bid: str) -> Counter[str]:
    with relay.batch_lease(bid) as held:
        if not held:
            return Counter(busy=1)
        rec = relay.batch(bid)
        if not rec or rec.get("state") == DONE:
            return Counter()
        if rec["state"] not in (SUBMITTED, COLLECTING):
            return Counter()
        adapter = relay.adapter(rec["profile"])
        pb = adapter.retrieve(rec["pbatch"])
        if not pb.terminal:
            relay.set_batch(bid, state=SUBMITTED)
            relay.schedule(bid, relay.now() + int(relay.settings.poll_interval_s * 1000))
            return Counter()
        unreadable = False
        if pb.status == "failed":
            counts = settle_failed(relay, bid, pb)
        else:
            counts = Counter()
            try:
                counts += settle_all(relay, bid, pb.id, _rows(adapter.results(pb), bid))
            except ProviderError as exc:
                if exc.retryable or exc.status not in GONE:
                    # 401/403 after a key rotation, a proxy's 3xx…: results may still be there.
                    relay.set_batch(bid, error=f"collect: {exc}")
                    raise
                # The file is gone for good (deleted, expired): what it held is re-sent below.
                log.error("results of batch %s gone, re-pooling the rest: %s", bid, exc)
                unreadable = True
            settled = sum(counts[k] for k in ("ok", "fail", "retry", "requeue"))
            if settled < int(rec.get("n") or 0):
                why = NEVER_RAN.get(pb.status, MISSING)
                counts += settle_all(relay, bid, pb.id, _missing(relay, bid, "retry", why))
        finish(relay, bid, pb, counts)
        capacity.release(relay, rec["profile"], rec["model"], bid)
        if relay.settings.delete_provider_files and not unreadable:
            adapter.cleanup(pb)
        return counts


def _rows(outcomes: Iterator, bid: str) -> Iterator[Row]:
    """Settle rows of the provider's outcomes; a custom_id that cannot be a request of this
    batch's group is logged and skipped (the batch's own requests are matched by the script,
    which counts a line for a request no longer in the batch as stale)."""
    tag = tag_of(bid)
    for o in outcomes:
        try:
            ours = tag_of(o.custom_id) == tag and o.custom_id.startswith("r_")
        except ValueError:
            ours = False
        if not ours:
            log.warning(
                "batch %s: result line for unknown custom_id %.80r skipped", bid, o.custom_id
            )
            continue
        yield (o.custom_id, o.kind, o.status_code, o.payload)


def _missing(relay: Relay, bid: str, outcome: str, payload: bytes) -> Iterator[Row]:
    """Every request of the batch; the script ignores those already settled."""
    for ids in iter_item_ids(relay, bid):
        for rid in ids:
            yield (rid, outcome, 0, payload)


def settle_failed(relay: Relay, bid: str, pb: ProviderBatch) -> Counter[str]:
    """Validation failed: requests on named lines fail with their error; the others were not
    at fault and go back to pending without losing an attempt."""
    by_line: dict[int, dict] = {}
    batch_errors = []
    for err in pb.errors:
        line = err.get("line")
        if isinstance(line, int) and line >= 1:
            by_line.setdefault(line, err)
        else:
            batch_errors.append(err)
    if any(e.get("code") == TOKEN_LIMIT for e in batch_errors):
        backoff_ms = int(relay.settings.token_limit_backoff_s * 1000)
        relay.redis.set(relay.keys.backoff(tag_of(bid)), 1, px=backoff_ms)
        log.warning("batch %s refused for enqueued tokens; group backs off %d ms", bid, backoff_ms)
    rows: list[Row] = []
    counts: Counter[str] = Counter()
    line = 0
    for ids in iter_item_ids(relay, bid):
        for rid in ids:
            line += 1
            err = by_line.get(line)
            if err is not None:
                rows.append((rid, "fail", 0, line_error(err, line)))
            elif by_line or any(e.get("code") == TOKEN_LIMIT for e in batch_errors):
                rows.append((rid, "requeue", 0, batch_error(pb)))
            else:
                rows.append((rid, "retry", 0, batch_error(pb)))
        counts += settle_all(relay, bid, pb.id, rows)
        rows = []
    return counts


def finish(relay: Relay, bid: str, pb: ProviderBatch, counts: Counter[str]) -> None:
    summary = {k: v for k, v in counts.items() if v}
    relay.finish_batch(bid, pstatus=pb.status, outcomes=orjson.dumps(summary).decode())
    log.info("batch %s (%s) collected: %s", bid, pb.status, summary)
