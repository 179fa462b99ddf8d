"""Applying provider outcomes to requests, in chunks, through the `settle` Lua command, and
counting the cost of tenants' final requests (`batchrelay.costs.bill`).

A line for a request that is not (any more) in the batch is ignored by the script, so any
step here may be repeated after a crash without double effects (docs/architecture.md, promise 3).
"""

from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Iterable, Sequence

from batchrelay import metrics_store
from batchrelay.costs import bill
from batchrelay.producer import commands
from batchrelay.producer.keys import tag_of
from batchrelay.worker.context import Relay

SETTLE_CHUNK = 500
Row = tuple[str, str, int, bytes]  # request id, outcome, status code, payload
COUNT_NAMES = ("ok", "fail", "retry", "requeue", "stale")


def settle(relay: Relay, bid: str, pbatch: str, rows: Sequence[Row]) -> Counter[str]:
    """Settle up to a chunk of rows in one script call; returns counts by outcome."""
    if not rows:
        return Counter()
    s = relay.settings
    call = commands.settle(
        relay.keys,
        bid,
        now_ms=relay.now(),
        retention_ms=s.result_retention_s * 1000,
        max_attempts=s.max_attempts,
        pbatch=pbatch,
        served_by=relay.redis.hget(relay.keys.batch(bid), "profile") or b"",
        rows=rows,
    )
    counts = Counter(dict(zip(COUNT_NAMES, commands.run(relay.redis, call), strict=True)))
    metrics_store.count("batchrelay_requests_total", "succeeded", n=counts["ok"])
    metrics_store.count("batchrelay_requests_total", "failed", n=counts["fail"])
    if counts["ok"] or counts["fail"]:
        tag = tag_of(bid)
        bill(relay.redis, relay.keys, tag, relay.group_meta(tag)["model"])
    return counts


def settle_all(relay: Relay, bid: str, pbatch: str, rows: Iterable[Row]) -> Counter[str]:
    """Settle a stream of rows in chunks. Parsing (this thread) and the Lua calls (a helper
    thread) overlap, with at most a few chunks in between, so memory stays bounded."""
    total: Counter[str] = Counter()
    chunks: queue.Queue[list[Row] | None] = queue.Queue(maxsize=4)
    failure: list[BaseException] = []

    def consume() -> None:
        while (chunk := chunks.get()) is not None:
            if failure:
                continue
            try:
                total.update(settle(relay, bid, pbatch, chunk))
            except BaseException as exc:  # handed back to the caller below
                failure.append(exc)

    thread = threading.Thread(target=consume, name=f"settle-{bid}", daemon=True)
    thread.start()
    try:
        chunk: list[Row] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) >= SETTLE_CHUNK:
                chunks.put(chunk)
                chunk = []
                if failure:
                    break
        if chunk:
            chunks.put(chunk)
    finally:
        chunks.put(None)
        thread.join()
    if failure:
        raise failure[0]
    return total
