"""Idle groups leave the groups list, and come back the moment a request arrives for them.

Any model a profile's globs allow makes a group, and every tick visits every listed group, so
groups that have nothing left must not stay listed forever; but a producer that listed a
group long ago must never store a request in a group no worker visits. Real Redis, the
emulator over HTTP, the worker's plain functions."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from batchrelay import AsyncBatchRelay, BatchRelay, RequestNotFoundError, Webhook
from batchrelay.emulator import start_emulator
from batchrelay.producer import commands
from batchrelay.producer.keys import new_request_id, tag_of
from batchrelay.producer.records import now_ms
from batchrelay.worker import sweep
from batchrelay.worker.context import RETIRED, Relay
from batchrelay.worker.delivery import dead_letters
from batchrelay.worker.sweep import retire_idle_groups, watch_retired
from tests._receiver import WebhookReceiver
from tests.relay.harness import CHAT, all_final, chat, drive, fast_emulator_config, relay_settings

RETENTION_S = 2


@pytest.fixture
def setup(redis_url):
    with start_emulator(fast_emulator_config()) as emu:
        settings = relay_settings(redis_url, emu, result_retention_s=RETENTION_S)
        producer, worker = BatchRelay(settings), Relay(settings)
        yield settings, producer, worker
        producer.close()
        worker.close()


def listed(worker: Relay) -> set[str]:
    return {g.tag for g in worker.groups()}


def wait_for_expiry(worker: Relay, tag: str) -> None:
    deadline = time.monotonic() + RETENTION_S + 5
    while worker.redis.exists(worker.keys.alive(tag)):
        assert time.monotonic() < deadline, "alive marker never expired"
        time.sleep(0.1)


def test_a_group_is_retired_only_after_its_records_expire_and_relisted_on_submit(setup):
    _, producer, worker = setup
    ids = producer.submit_many([{"endpoint": CHAT, "body": chat(f"g{i}")} for i in range(3)])
    tag = tag_of(ids[0])
    drive(worker, all_final(producer, ids))
    assert retire_idle_groups(worker) == []  # results are still readable: keep the group
    assert producer.result(ids[0], timeout=1)["status"] == "succeeded"

    wait_for_expiry(worker, tag)
    assert not worker.redis.exists(worker.keys.req(ids[0]))  # the records went with it
    with pytest.raises(RequestNotFoundError):  # readable for the retention period, not after
        producer.result(ids[0], timeout=1)
    assert retire_idle_groups(worker) == [tag]
    assert tag not in listed(worker)
    assert not worker.redis.exists(worker.keys.registered(tag), worker.keys.pbytes(tag))

    # The same producer listed this group before; its next request lists it again.
    rid = producer.submit(CHAT, chat("after the retirement"))
    assert tag_of(rid) == tag and tag in listed(worker)
    drive(worker, all_final(producer, [rid]))
    assert (
        producer.result(rid, timeout=1)["response"]["body"]["choices"][0]["message"]["content"]
        == "echo: after the retirement"
    )


def test_pending_work_and_dead_letters_keep_a_group_listed(setup):
    _, producer, worker = setup
    waiting = producer.submit(CHAT, chat("not packed yet"))
    assert retire_idle_groups(worker) == [] and tag_of(waiting) in listed(worker)
    producer.cancel(waiting)

    with WebhookReceiver() as receiver:
        receiver.status_for = lambda _id: 410
        hook = Webhook(receiver.url)
        dead = producer.submit(
            CHAT, chat("goes to the dead letters", "gpt-4.1-nano"), callback=hook
        )
        drive(worker, lambda: bool(dead_letters(worker)))
    wait_for_expiry(worker, tag_of(dead))
    wait_for_expiry(worker, tag_of(waiting))  # a cancel counts as final too
    assert retire_idle_groups(worker) == [tag_of(waiting)]
    assert tag_of(dead) in listed(worker)


def idle_group(producer: BatchRelay, worker: Relay, text: str) -> str:
    """A group whose only request is final and whose records have expired."""
    rid = producer.submit(CHAT, chat(text))
    drive(worker, all_final(producer, [rid]))
    wait_for_expiry(worker, tag_of(rid))
    return tag_of(rid)


def intake_only(producer: BatchRelay, worker: Relay, text: str) -> tuple[str, dict]:
    """A submit whose listing of the group was undone by a retirement and whose producer died
    before listing it again: only the intake script runs. Returns the id and what the
    producer would have listed again."""
    p = producer._core.intake.prepare(CHAT, chat(text))
    rid = new_request_id(p.tag)
    row = commands.IntakeRow(rid, p.line_bytes, p.body_json, b"", b"", "")
    call = commands.intake(worker.keys, p.tag, now_ms(), [row])
    _stored, unlisted = commands.run(worker.redis, call)
    return rid, {p.tag: p.profile} if unlisted else {}


def test_a_request_that_lands_mid_retirement_is_not_orphaned(setup):
    _, producer, worker = setup
    tag = idle_group(producer, worker, "before")
    assert retire_idle_groups(worker) == [tag]
    rid, relist = intake_only(producer, worker, "mid-retirement")
    assert list(relist) == [tag]  # intake reported the missing mark: a live producer relists
    assert tag not in listed(worker)  # this one died first: only the watch can find it
    # The next sweep sees the request and lists the group again; the request completes.
    assert watch_retired(worker) == [tag] and tag in listed(worker)
    drive(worker, all_final(producer, [rid]))
    assert producer.result(rid, timeout=1)["status"] == "succeeded"


def test_a_retirement_cut_short_by_a_crash_is_repaired(setup):
    _, producer, worker = setup
    tag = idle_group(producer, worker, "before")
    # A request arrives and the group is listed; then a sweep that looked earlier takes it off
    # the list (the MULTI move) and is SIGKILLed before the atomic check.
    rid = producer.submit(CHAT, chat("during the crash"))
    entry = worker.redis.hget(worker.keys.groups, tag)
    pipe = worker.redis.pipeline(transaction=True)
    pipe.hset(worker.keys.groups, RETIRED + tag, orjson.dumps({**orjson.loads(entry), "at": 0}))
    pipe.hdel(worker.keys.groups, tag)
    pipe.execute()
    assert tag not in listed(worker)
    assert retire_idle_groups(worker) == []  # the next sweep first repairs it
    assert tag in listed(worker)
    assert not worker.redis.hexists(worker.keys.groups, RETIRED + tag)
    drive(worker, all_final(producer, [rid]))


def test_tombstones_are_forgotten_after_the_watch(setup, monkeypatch):
    _, producer, worker = setup
    tag = idle_group(producer, worker, "gone")
    assert retire_idle_groups(worker) == [tag]
    assert worker.redis.hexists(worker.keys.groups, RETIRED + tag)
    assert watch_retired(worker) == [] and worker.redis.hexists(worker.keys.groups, RETIRED + tag)
    monkeypatch.setattr(sweep, "RETIRED_WATCH_MS", -1)
    assert watch_retired(worker) == []
    assert not worker.redis.hexists(worker.keys.groups, RETIRED + tag)


def test_alive_is_only_ever_pushed_later(setup):
    _, producer, worker = setup
    rid = producer.submit(CHAT, chat("cancel me"))
    key = worker.keys.alive(tag_of(rid))
    worker.redis.set(key, 1, px=100_000)  # a worker with a longer retention settled here
    producer.cancel(rid)  # this producer keeps results RETENTION_S (2 s)
    assert worker.redis.pttl(key) > 50_000


def test_the_async_client_relists_a_retired_group(setup):
    settings, producer, worker = setup
    rid = producer.submit(CHAT, chat("first"))
    tag = tag_of(rid)
    drive(worker, all_final(producer, [rid]))
    wait_for_expiry(worker, tag)
    assert retire_idle_groups(worker) == [tag]

    async def submit_again() -> str:
        async with AsyncBatchRelay(settings) as relay:
            return await relay.submit(CHAT, chat("second"))

    again = asyncio.run(submit_again())
    assert tag in listed(worker)
    drive(worker, all_final(producer, [again]))
