"""The deployed system with its state on a 3-master + 3-replica Redis Cluster: real worker and
beat processes, Celery's broker on a standalone Redis or on RabbitMQ, the emulator over HTTP,
a real webhook receiver; and a master SIGKILLed mid-run."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest

from batchrelay import AsyncBatchRelay, BatchRelay
from batchrelay.config import Settings
from batchrelay.emulator import start_emulator
from batchrelay.producer.keys import tag_of
from tests._rabbit import queue_types, rabbit_url  # noqa: F401
from tests._stack import Stack
from tests.relay.harness import fast_emulator_config
from tests.relay.test_stack import check_delivered_once, stack_settings, submit_mixed


def wait_sync(settings, rid: str) -> str:
    with BatchRelay(settings) as relay:
        return relay.result(rid, timeout=120)["status"]


def wait_async(settings, rid: str) -> str:
    async def wait() -> str:
        async with AsyncBatchRelay(settings) as relay:
            return (await relay.result(rid, timeout=120))["status"]

    return asyncio.run(wait())


@pytest.fixture
def receiver():
    from tests._receiver import WebhookReceiver

    with WebhookReceiver() as r:
        yield r


def run_stack(state_url: str, broker: str, receiver, tmp_path, n: int, per_batch: int) -> None:
    """`n` requests over 4 groups, `per_batch` to a provider batch (several batches a group)."""
    with start_emulator(fast_emulator_config()) as emu:
        settings = stack_settings(
            state_url, emu, broker_url=broker, profile={"max_requests_per_batch": per_batch}
        )
        stack = Stack(settings, tmp_path)
        producer = BatchRelay(settings)
        try:
            stack.start_worker("w1")
            stack.start_worker("w2")
            stack.start_beat()
            ids, texts = submit_mixed(producer, receiver, n)
            stack.wait_until(lambda: receiver.wait_for(n, 0.01), 180, f"{n} webhooks")
            check_delivered_once(producer, receiver, ids, texts, emu)
            twice = {rid: len(d) for rid, d in receiver.by_id().items() if len(d) > 1}
            assert not twice, twice
            if broker.startswith("amqp://"):
                assert queue_types(broker)[settings.queue] == "quorum"
            # RedBeat's schedule and lock live on the cluster.
            prefix = f"{settings.key_prefix}:redbeat"
            assert producer.redis.exists(f"{prefix}:lock", f"{prefix}:schedule") == 2
        finally:
            stack.stop()
            producer.close()


def test_two_thousand_requests_state_on_cluster_broker_on_redis(
    cluster_url, redis_url, receiver, tmp_path
):
    run_stack(cluster_url, redis_url, receiver, tmp_path, 2000, 300)


def test_six_hundred_requests_state_on_cluster_broker_on_rabbitmq(
    cluster_url,
    rabbit_url,  # noqa: F811
    receiver,
    tmp_path,
):
    """What changes with RabbitMQ is the broker (quorum queue, the tasks' path), not the
    volume: 600 requests still make several provider batches in each of the 4 groups."""
    run_stack(cluster_url, rabbit_url, receiver, tmp_path, 600, 60)


def test_a_master_killed_mid_run_loses_nothing(
    redis_cluster, cluster_url, redis_url, receiver, tmp_path
):
    """SIGKILL the master holding a group while its batches are in flight: its replica is
    promoted, and every request still ends succeeded with its webhook, one provider batch per
    claim. The kill comes after intake has replicated (see README Limits: replication is
    asynchronous, so a write in the last moment before a master dies can be lost)."""
    with start_emulator(fast_emulator_config(processing_rate_rps=200)) as emu:
        settings = stack_settings(
            cluster_url, emu, broker_url=redis_url, profile={"max_requests_per_batch": 100}
        )
        stack = Stack(settings, tmp_path)
        stack.supervised = True  # as compose's restart policy: a beat that lost its lock
        producer = BatchRelay(settings)
        try:
            stack.start_worker("w1")
            stack.start_worker("w2")
            stack.start_beat()
            ids, texts = submit_mixed(producer, receiver, 600)
            cluster = producer.redis
            for node in cluster.get_primaries():  # intake is on the replicas too
                cluster.get_redis_connection(node).wait(1, 5000)
            stack.wait_until(lambda: receiver.wait_for(1, 0.01), 60, "a first webhook")
            # The master with the most requests not yet delivered, not the node the URL
            # names (a process that starts while that node is down cannot find the cluster:
            # README Limits).
            named = int(cluster_url.rsplit(":", 1)[1].split("/")[0])
            keys = producer._core.keys
            open_on = Counter(
                cluster.get_node_from_key(keys.pending(tag_of(r))).name
                for r in set(ids) - receiver.ok_ids()
            )
            victim = next(
                node
                for name, _ in open_on.most_common()
                if (node := cluster.get_node(node_name=name)).port != named
            )
            # Waiting on a request of the victim's groups across the failover: result() and
            # wait() subscribe again on the new master, sync and asyncio.
            rid = next(
                r
                for r in ids
                if r not in receiver.ok_ids()
                and cluster.get_node_from_key(keys.pending(tag_of(r))) == victim
            )
            waited: dict[str, object] = {}

            def waiter(name: str, wait: Callable[[Settings, str], str]) -> None:
                try:
                    waited[name] = wait(settings, rid)
                except Exception as exc:  # shown by the assertion below
                    waited[name] = repr(exc)

            waiters = [
                threading.Thread(target=waiter, args=("sync", wait_sync)),
                threading.Thread(target=waiter, args=("aio", wait_async)),
            ]
            for waiter in waiters:
                waiter.start()
            time.sleep(1)  # subscribed
            redis_cluster.kill(victim.port)
            redis_cluster.wait_failover(victim.port)
            stack.wait_until(lambda: receiver.wait_for(600, 0.01), 180, "600 webhooks")
            check_delivered_once(producer, receiver, ids, texts, emu)
            for waiter in waiters:
                waiter.join(60)
            assert waited == {"sync": "succeeded", "aio": "succeeded"}, waited
        finally:
            stack.stop()
            producer.close()
