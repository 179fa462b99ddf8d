"""Applying provider outcomes to requests, in chunks, through the `settle` Lua command.

A line for a request that is not (any more) in the batch is ignored by the script, so any
step here may be repeated after a crash without double effects (promise 3).
"""

from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Iterable, Sequence

from batchrelay.producer.keys import tag_of
from batchrelay.worker.context import Relay

from batchrelay import metrics_store

SETTLE_CHUNK = 500
Row = tuple[str, str, int, bytes]  # request id, outcome, status code, payload
COUNT_NAMES = ("ok", "fail", "retry", "requeue", "stale")


def settle(relay: Relay, bid: str, pbatch: str, rows: Sequence[Row]) -> Counter[str]:
    """Settle up to a chunk of rows in one script call; returns counts by outcome."""
    if not rows:
        return Counter()
    tag, k, s = tag_of(bid), relay.keys, relay.settings
    args: list[object] = [
        "settle",
        k.done(tag),
        k.req_prefix(tag),
        bid,
        relay.now(),
        s.result_retention_s * 1000,
        s.max_attempts,
        pbatch,
        relay.redis.hget(k.batch(bid), "profile") or b"",
    ]
    for rid, outcome, status, payload in rows:
        args += (rid, outcome, status, payload)
    keys = [k.pending(tag), k.pbytes(tag), k.deliver(tag), k.alive(tag)]
    counts = Counter(dict(zip(COUNT_NAMES, relay.script(keys=keys, args=args), strict=True)))
    metrics_store.count("batchrelay_requests_total", "succeeded", n=counts["ok"])
    metrics_store.count("batchrelay_requests_total", "failed", n=counts["fail"])
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
