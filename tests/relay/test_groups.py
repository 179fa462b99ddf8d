"""Idle groups leave the groups list, and come back the moment a request arrives for them.

Any model a profile's globs allow makes a group, and every tick visits every listed group, so
groups that have nothing left must not stay listed forever; but a producer that listed a
group long ago must never store a request in a group no worker visits. Real Redis, the
emulator over HTTP, the worker's plain functions."""

from __future__ import annotations

import asyncio
import time

import pytest

from emulator import start_emulator
from producer import AsyncBatchRelay, BatchRelay, RequestNotFoundError, Webhook
from producer.keys import tag_of
from tests._receiver import WebhookReceiver
from tests.relay.harness import CHAT, all_final, chat, drive, fast_emulator_config, relay_settings
from worker.context import Relay
from worker.delivery import dead_letters
from worker.sweep import retire_idle_groups

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


def test_retire_refuses_a_group_that_got_a_request_after_the_first_look(setup):
    _, producer, worker = setup
    rid = producer.submit(CHAT, chat("arrives during the retirement"))
    tag, k = tag_of(rid), worker.keys
    keys = [k.pending(tag), k.inflight(tag), k.deliver(tag), k.dead(tag)]
    keys += [k.alive(tag), k.registered(tag), k.pbytes(tag)]
    assert worker.script(keys=keys, args=["retire"]) == 0
    assert worker.redis.exists(k.registered(tag))


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
