"""Nothing batchrelay stores outlives its retention: requests are driven through every way they
can end, with a 2 s retention, and afterwards the Redis database holds no batchrelay key.

Steps run inline (real Redis, the emulator over HTTP, a real webhook receiver). Waits the code
measures with `Relay.now()` (the retired-group watch) are passed with a relay whose clock is
ahead; only the records' real TTLs are slept out.
"""

from __future__ import annotations

import time

import pytest
import redis

from batchrelay import BatchRelay, Webhook
from batchrelay.emulator import start_emulator
from batchrelay.producer.keys import tag_of
from batchrelay.worker.context import SUBMITTED, Relay
from batchrelay.worker.delivery import dead_letters, replay
from batchrelay.worker.packing import aggregate
from batchrelay.worker.submission import submit_batch
from batchrelay.worker.sweep import RETIRED_WATCH_MS, sweep
from tests._receiver import WebhookReceiver
from tests.relay.harness import CHAT, all_final, chat, drive, fast_emulator_config, relay_settings

RETENTION_S = 2
# Keys a deployment keeps by design, whatever its traffic: none. (The groups hash empties
# once every group is retired and its tombstone forgotten; profile reservations are hash
# fields removed when given back.)
DEPLOYMENT_KEYS: set[bytes] = set()


class LaterRelay(Relay):
    """The same deployment, `ahead_ms` later by its own clock."""

    def __init__(self, settings, ahead_ms: int) -> None:
        super().__init__(settings)
        self.ahead_ms = ahead_ms

    def now(self) -> int:
        return super().now() + self.ahead_ms


def used_memory(client: redis.Redis) -> dict[str, int]:
    """Redis's `used_memory` and `used_memory_dataset`, to print. Not asserted on: with no key
    left, Redis still keeps its grown key tables, the script cache and client buffers."""
    info = client.info("memory")
    return {"used_memory": info["used_memory"], "dataset": info["used_memory_dataset"]}


@pytest.fixture
def receiver():
    with WebhookReceiver() as r:
        yield r


def test_every_ending_leaves_nothing_behind_after_retention(redis_url, receiver):
    picky_config = fast_emulator_config(required_upload_fields=["target_model_names"])
    with start_emulator(fast_emulator_config()) as emu, start_emulator(picky_config) as picky:
        providers = [
            {
                "name": "emu",
                "base_url": emu.openai_base_url,
                "api_key": emu.api_key,
                "models": ["gpt-*", "nomodel-*"],
            },
            # Refuses every upload (a required form field is missing): the batch is refused.
            {
                "name": "picky",
                "base_url": picky.openai_base_url,
                "api_key": picky.api_key,
                "models": ["refuse-*"],
            },
        ]
        settings = relay_settings(
            redis_url, emu, providers=providers, result_retention_s=RETENTION_S, max_attempts=2
        )
        producer, worker = BatchRelay(settings), Relay(settings)
        later = LaterRelay(settings, RETIRED_WATCH_MS + 60_000)
        try:
            empty = used_memory(worker.redis)
            busy = _drive_every_ending(producer, worker, emu, receiver)
            time.sleep(RETENTION_S + 0.5)  # the records' TTLs: real time
            sweep(worker)  # retires the idle groups and prunes the provider-batch registry
            sweep(later)  # an hour on: the retired groups' tombstones are forgotten
            remaining = set(worker.redis.keys("*"))
            after = used_memory(worker.redis)
        finally:
            producer.close()
            worker.close()
            later.close()
    print(f"\nRedis used_memory: empty {empty}, after the traffic {busy}, after retention {after}")
    assert remaining == DEPLOYMENT_KEYS, sorted(remaining)


def _drive_every_ending(producer: BatchRelay, worker: Relay, emu, receiver) -> dict[str, int]:
    """Requests ending every way there is; returns Redis used_memory once all are final."""
    hook = Webhook(receiver.url)
    dead: set[str] = set()
    receiver.status_for = lambda rid: 410 if rid in dead else None

    def submit(model: str, n: int, **extra: str) -> list[str]:
        body = {"endpoint": CHAT, "callback": hook, **extra}
        return producer.submit_many(
            [{**body, "body": chat(f"{model} {i}", model)} for i in range(n)]
        )

    def ended(rids: list[str], *states: str) -> None:
        """Drive until `rids` are final, and check how they ended (before any expires)."""
        drive(worker, all_final(producer, rids))
        assert [producer.status(r).state for r in rids] == list(states)

    ok = submit("gpt-ok", 2) + submit("gpt-ok", 1, idempotency_key="keyspace")
    ended(ok, "succeeded", "succeeded", "succeeded")
    ended(submit("nomodel-1", 2), "failed", "failed")  # the provider fails each line
    refused = submit("refuse-1", 1)  # refused twice, then failed (max_attempts=2)
    ended(refused, "failed")
    assert producer.result(refused[0])["error"]["code"] == "batch_refused"

    # Cancelled before submission: two in a claimed batch that they empty, one while pending.
    emptied = submit("gpt-empty", 2)
    [bid] = aggregate(worker, worker.now() + 60_000)
    for rid in emptied:
        producer.cancel(rid)
    assert submit_batch(worker, bid) == "empty"
    cancelled = submit("gpt-cancel", 2)
    producer.cancel(cancelled[0])
    ended(emptied + cancelled, "cancelled", "cancelled", "cancelled", "succeeded")

    # Cancelled at the provider: the lines that never ran go back to pending, then succeed.
    emu.set_timings(processing_rate_rps=2)
    repooled = submit("gpt-provider-cancel", 10)
    tag = tag_of(repooled[0])
    drive(worker, lambda: _submitted(worker, tag) is not None)
    rec = _submitted(worker, tag)
    assert rec is not None
    emu.set_timings(processing_rate_rps=50_000)
    worker.adapter(rec["profile"]).cancel(rec["pbatch"])
    ended(repooled, *["succeeded"] * 10)
    assert max(producer.status(r).attempt for r in repooled) == 2

    # Expired at the provider: finished lines delivered, the rest retried.
    emu.set_faults(expire_next=1, expire_after_fraction=0.5)
    expired = submit("gpt-expire", 10)
    ended(expired, *["succeeded"] * 10)
    assert max(producer.status(r).attempt for r in expired) == 2

    # Dead-lettered (the receiver says 410 Gone), then replayed and delivered.
    gone = submit("gpt-dead", 1)
    dead.update(gone)
    drive(worker, lambda: bool(dead_letters(worker)))
    dead.clear()
    assert replay(worker) == 1
    drive(worker, lambda: producer.status(gone[0]).delivery == "delivered")
    return used_memory(worker.redis)


def _submitted(worker: Relay, tag: str) -> dict[str, str] | None:
    for raw in worker.redis.zrange(worker.keys.inflight(tag), 0, -1):
        rec = worker.batch(raw.decode())
        if rec.get("state") == SUBMITTED and rec.get("pbatch"):
            return rec
    return None
