"""The producer (sync and asyncio), the worker's functions and the status views on a real
3-master + 3-replica Redis Cluster: found from `INFO`, every operation within one slot."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections import defaultdict

import pytest
from redis.cluster import RedisCluster
from redis.crc import key_slot

from batchrelay import (
    AsyncBatchRelay,
    BatchRelay,
    CancelError,
    IdempotencyConflictError,
    RelayUnavailableError,
    Webhook,
)
from batchrelay.config import ConfigurationError
from batchrelay.emulator import start_emulator
from batchrelay.producer.keys import tag_of
from batchrelay.worker.context import Relay
from batchrelay.worker.status import finished_batches, overview
from tests._cluster import RedisClusterServers
from tests._receiver import WebhookReceiver
from tests._stack import ROOT, settings_env
from tests.relay.harness import (
    CHAT,
    EMB,
    SECRET,
    all_final,
    chat,
    drive,
    fast_emulator_config,
    relay_settings,
)

MODELS = [f"gpt-4o-mini-{i}" for i in range(12)]


def items(n: int, hook: Webhook, *, keyed: bool = False) -> list[dict]:
    out = []
    for i in range(n):
        if i % 3 == 2:
            body = {"model": "text-embedding-3-small", "input": f"doc {i}"}
            item = {"endpoint": EMB, "body": body, "callback": hook}
        else:
            item = {"endpoint": CHAT, "body": chat(f"prompt {i}", MODELS[i % 12]), "callback": hook}
        if keyed:
            item["idempotency_key"] = f"k{i}"
        out.append(item)
    return out


def test_sync_producer_and_worker_on_a_cluster(cluster_url, tmp_path):
    with start_emulator(fast_emulator_config()) as emu, WebhookReceiver() as receiver:
        settings = relay_settings(cluster_url, emu)
        producer, relay = BatchRelay(settings), Relay(settings)
        try:
            assert isinstance(producer.redis, RedisCluster)  # found from INFO, not configured
            assert isinstance(relay.redis, RedisCluster)
            hook = Webhook(receiver.url + "/in")
            ids = producer.submit_many(items(90, hook, keyed=True))
            again = producer.submit_many(items(90, hook, keyed=True))
            assert again == ids and again.new == 0 and ids.new == 90
            with pytest.raises(IdempotencyConflictError):
                producer.submit(CHAT, chat("other"), idempotency_key="k0")
            gone = producer.submit(CHAT, chat("cancel me"))
            producer.cancel(gone)
            waited: dict[str, dict] = {}
            waiter = threading.Thread(
                target=lambda: waited.update(r=producer.result(ids[0], timeout=60))
            )
            waiter.start()
            view = overview(relay)
            assert sum(g["pending"] for g in view["groups"]) == 90
            drive(relay, all_final(producer, ids), timeout=60)
            waiter.join(60)
            assert waited["r"]["status"] == "succeeded"
            assert all(s.state == "succeeded" for s in producer.statuses(ids))
            assert producer.status(gone).state == "cancelled"
            assert producer.wait(ids, timeout=10).succeeded == 90
            with pytest.raises(CancelError):
                producer.cancel(ids[1])
            assert receiver.wait_for(90, 30)
            assert receiver.verify_all(SECRET) >= 90
            # take_wave and settle_deliveries ran on the cluster (one slot per group's call).
            drive(relay, lambda: {s.delivery for s in producer.statuses(ids)} == {"delivered"})
            # Finished batches are found by scanning every master.
            finished = finished_batches(relay, 100)
            used = {item["body"]["model"] for item in items(90, hook)}
            assert {b["model"] for b in finished} == used and len(used) == 9
            assert sum(b["requests"] for b in finished) == 90
        finally:
            producer.close()
            relay.close()


def test_async_producer_on_a_cluster(cluster_url):
    with start_emulator(fast_emulator_config()) as emu, WebhookReceiver() as receiver:
        settings = relay_settings(cluster_url, emu)
        relay = Relay(settings)
        hook = Webhook(receiver.url + "/in")

        async def run() -> None:
            async with AsyncBatchRelay(settings) as producer:
                ids = await producer.submit_many(items(60, hook, keyed=True))
                assert ids.new == 60
                assert (await producer.submit_many(items(60, hook, keyed=True))).new == 0
                driver = threading.Thread(
                    target=drive, args=(relay, lambda: relay_done(ids)), kwargs={"timeout": 60}
                )
                driver.start()
                results = await asyncio.gather(*(producer.result(r, timeout=60) for r in ids[:5]))
                await asyncio.to_thread(driver.join, 60)
                assert [r["status"] for r in results] == ["succeeded"] * 5
                assert (await producer.wait(ids, timeout=10)).succeeded == 60
            async with AsyncBatchRelay(settings) as fresh:  # a result() as its first call
                assert (await fresh.result(ids[7], timeout=10))["status"] == "succeeded"

        def relay_done(ids: list[str]) -> bool:
            return all(relay.redis.hget(relay.keys.req(r), "state") == b"succeeded" for r in ids)

        try:
            asyncio.run(run())
        finally:
            relay.close()


def test_a_groups_keys_share_one_slot_and_groups_spread_over_the_masters(cluster_url):
    with start_emulator(fast_emulator_config()) as emu, WebhookReceiver() as receiver:
        settings = relay_settings(cluster_url, emu)
        producer, relay = BatchRelay(settings), Relay(settings)
        try:
            hook = Webhook(receiver.url + "/in")
            bodies = [chat(f"p{i}", f"gpt-4.1-nano-{i % 30}") for i in range(60)]
            ids = producer.submit_many(
                [{"endpoint": CHAT, "body": b, "callback": hook} for b in bodies]
            )
            drive(relay, all_final(producer, ids), timeout=60)
            cluster = relay.redis
            slots: dict[str, set[int]] = defaultdict(set)
            masters: dict[str, set[str]] = defaultdict(set)
            for key in cluster.scan_iter(match=f"{settings.key_prefix}:{{*"):
                text = key.decode()
                tag = text.split("{", 1)[1].split("}", 1)[0]
                if tag.startswith("pf:"):
                    continue  # a provider profile's keys: one tag of their own
                slots[tag].add(key_slot(key))
                masters[tag].add(cluster.get_node_from_key(key).name)
            assert set(slots) == {tag_of(r) for r in ids}
            assert len(slots) == 30
            assert all(len(s) == 1 for s in slots.values()), slots
            assert all(len(m) == 1 for m in masters.values()), masters
            used = set().union(*masters.values())
            assert used == {n.name for n in cluster.get_primaries()}, used
            # The done channel is in the group's slot too (SPUBLISH from the script).
            for tag, (slot,) in slots.items():
                assert key_slot(relay.keys.done(tag).encode()) == slot
        finally:
            producer.close()
            relay.close()


def test_a_cluster_url_naming_a_database_is_refused(cluster_url):
    with start_emulator(fast_emulator_config()) as emu:
        producer = BatchRelay(relay_settings(cluster_url.removesuffix("/0") + "/2", emu))
        with pytest.raises(ConfigurationError, match="a Redis Cluster has only database 0"):
            producer.submit(CHAT, chat("x"))


@pytest.mark.parametrize("process", ["worker", "beat"])
def test_a_cluster_without_a_broker_url_stops_worker_and_beat(cluster_url, process, tmp_path):
    with start_emulator(fast_emulator_config()) as emu:
        env = settings_env(relay_settings(cluster_url, emu))
    args = [process, "-s", str(tmp_path / "schedule")] if process == "beat" else [process]
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "batchrelay.worker", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 78, proc.stderr[-2000:]
    assert b"is a Redis Cluster, which cannot be Celery's broker" in proc.stderr
    assert b"set BATCHRELAY_BROKER_URL" in proc.stderr


def test_a_cluster_over_tls_with_a_password_works_and_never_shows_it(tmp_path):
    """TLS and AUTH on every node (`rediss://`): the sync and asyncio producers and the worker
    reach the cluster (the asyncio per-master clients too); errors show the URL masked."""
    cert = tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
         str(tmp_path / "key.pem"), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    servers = RedisClusterServers(
        tmp_path, masters=3, replicas=0, password="s3cret-pw", tls_cert=cert
    )
    servers.start()
    try:
        with start_emulator(fast_emulator_config()) as emu, WebhookReceiver() as receiver:
            settings = relay_settings(servers.url, emu)
            assert settings.redis_url.get_secret_value().startswith("rediss://")
            producer, relay = BatchRelay(settings), Relay(settings)
            hook = Webhook(receiver.url + "/in")
            try:
                ids = producer.submit_many(items(30, hook, keyed=True))

                async def also_async() -> list[str]:
                    async with AsyncBatchRelay(settings) as aproducer:
                        return await aproducer.submit_many(items(30, hook))

                ids += asyncio.run(also_async())
                drive(relay, all_final(producer, ids), timeout=60)
                assert producer.wait(ids, timeout=10).succeeded == 60
            finally:
                producer.close()
                relay.close()
    finally:
        servers.stop()
    with pytest.raises(RelayUnavailableError) as down:
        BatchRelay(settings).submit(CHAT, chat("x"))
    assert "s3cret-pw" not in str(down.value) and ":***@127.0.0.1" in str(down.value)
