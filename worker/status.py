"""What the system is doing, for `batchrelay status` and operators: pending work per group,
live batches with their provider status, stuck batches, due deliveries and dead letters."""

from __future__ import annotations

from typing import Any

import orjson

from batchrelay.worker.context import DONE, Relay


def overview(relay: Relay) -> dict[str, Any]:
    now = relay.now()
    groups, batches = [], []
    dead = due = 0
    for g in relay.groups():
        k = relay.keys
        pipe = relay.redis.pipeline(transaction=False)
        pipe.zcard(k.pending(g.tag))
        pipe.get(k.pbytes(g.tag))
        pipe.zrange(k.pending(g.tag), 0, 0, withscores=True)
        pipe.pttl(k.backoff(g.tag))
        pipe.zrange(k.inflight(g.tag), 0, -1)
        pipe.zcard(k.dead(g.tag))
        pipe.zcount(k.deliver(g.tag), "-inf", now)
        pending, size, oldest, backoff, live, n_dead, n_due = pipe.execute()
        dead += n_dead
        due += n_due
        groups.append(
            {
                "group": g.tag,
                "profile": g.profile,
                "endpoint": g.endpoint,
                "model": g.model,
                "pending": pending,
                "pending_bytes": int(size or 0),
                "oldest_age_s": round((now - oldest[0][1]) / 1000, 1) if oldest else None,
                "backoff_s": round(backoff / 1000, 1) if backoff and backoff > 0 else None,
                "live_batches": len(live),
            }
        )
        for raw in live:
            rec = relay.batch(raw.decode())
            if rec:
                batches.append(batch_view(rec, now))
    return {"groups": groups, "batches": batches, "deliveries_due": due, "dead_letters": dead}


def batch_view(rec: dict[str, str], now: int) -> dict[str, Any]:
    since = int(rec.get("pstatus_since") or rec.get("claimed") or now)
    return {
        "id": rec["id"],
        "state": rec.get("state"),
        "profile": rec.get("profile"),
        "endpoint": rec.get("endpoint"),
        "model": rec.get("model"),
        "requests": int(rec.get("n") or 0),
        "provider_batch_id": rec.get("pbatch"),
        "provider_status": rec.get("pstatus"),
        "counts": orjson.loads(rec["counts"]) if rec.get("counts") else None,
        "in_status_s": round((now - since) / 1000, 1),
        "stuck": rec.get("stuck") or None,
        "outcomes": orjson.loads(rec["outcomes"]) if rec.get("outcomes") else None,
        "error": rec.get("error") or None,
    }


def finished_batches(relay: Relay, limit: int) -> list[dict[str, Any]]:
    """The `limit` most recently finished batches still on record (a record is kept
    `result_retention_s`), newest first, with their final provider status: each group's
    `finished` index, then those records, in two round trips."""
    groups = relay.groups()
    pipe = relay.redis.pipeline(transaction=False)
    for group in groups:
        pipe.zrevrange(relay.keys.finished(group.tag), 0, limit - 1, withscores=True)
    newest = sorted(
        ((score, bid.decode()) for part in pipe.execute() for bid, score in part), reverse=True
    )[:limit]
    pipe = relay.redis.pipeline(transaction=False)
    for _, bid in newest:
        pipe.hgetall(relay.keys.batch(bid))
    records = [{k.decode(): v.decode() for k, v in raw.items()} for raw in pipe.execute()]
    now = relay.now()
    return [batch_view(r, now) for r in records if r.get("state") == DONE and "id" in r]
