"""Polling submitted batches, each on its own next-poll time (a due-time in Redis,
docs/architecture.md promise 6).

The interval grows while a batch's status stays the same and resets when it changes. A batch
that sits in one status too long is reported (log line, `stuck` on its record), never dropped.
A batch that has ended gives back its slot and tokens at its profile (see `capacity`). Every
call goes to the profile the batch record names, which may be a fallback of its group's.
"""

from __future__ import annotations

import logging

import orjson

from batchrelay.worker import capacity
from batchrelay.worker.context import COLLECTING, SUBMITTED, Relay

log = logging.getLogger(__name__)

BACKOFF_FACTOR = 1.5


def stuck_threshold_s(relay: Relay, profile_name: str, status: str) -> float:
    """In progress may legitimately last the whole completion window; other statuses not."""
    if status == "in_progress":
        window = relay.settings.profile(profile_name).completion_window_s
        return window + relay.settings.stuck_after_s
    return relay.settings.stuck_after_s


def poll_batch(relay: Relay, bid: str) -> str:
    """Check one batch at the provider; returns 'collect' when it is ready to be collected.

    Under the batch's lease, so a stale, redelivered poll cannot move a batch that another
    worker is collecting (or has collected) back to collecting."""
    with relay.batch_lease(bid) as held:
        return _poll(relay, bid) if held else "busy"


def _poll(relay: Relay, bid: str) -> str:
    rec = relay.batch(bid)
    if not rec or rec.get("state") != SUBMITTED:
        return rec.get("state", "missing") if rec else "missing"
    pb = relay.adapter(rec["profile"]).retrieve(rec["pbatch"])
    s, now = relay.settings, relay.now()
    changed = pb.status != rec.get("pstatus")
    since = now if changed else int(rec.get("pstatus_since") or now)
    interval = (
        s.poll_interval_s
        if changed
        else min(
            s.poll_max_interval_s, float(rec.get("interval") or s.poll_interval_s) * BACKOFF_FACTOR
        )
    )
    fields: dict[str, object] = {
        "pstatus": pb.status,
        "pstatus_since": since,
        "counts": orjson.dumps(pb.counts).decode(),
        "interval": interval,
        "polled": now,
    }
    if changed:
        fields["stuck"] = ""
    elif not rec.get("stuck"):
        age_s = (now - since) / 1000
        if age_s > stuck_threshold_s(relay, rec["profile"], pb.status):
            log.warning(
                "batch %s (provider %s) stuck in %r for %.0f s", bid, pb.id, pb.status, age_s
            )
            fields["stuck"] = f"{pb.status} since {since}"
    if pb.terminal:
        fields["state"] = COLLECTING
        relay.set_batch(bid, **fields)
        relay.schedule(bid, now + relay.lease_ms())
        # Its tokens are no longer enqueued at the provider: free the slot for the next batch.
        capacity.release(relay, rec["profile"], rec["model"], bid)
        return "collect"
    relay.set_batch(bid, **fields)
    relay.schedule(bid, now + int(interval * 1000))
    return pb.status
