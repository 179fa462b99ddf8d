"""Chaos end to end: the promises of docs/architecture.md under fire, with one line of figures.

While requests flow, the test SIGKILLs random worker pool processes and whole workers and
restarts them, kills and restarts beat, and restarts Redis (AOF on). The emulator injects
HTTP 500s on API calls, failed requests, an expired batch and a batch stuck in finalizing;
the webhook receiver fails 10% of first attempts and is down for a stretch.

Then: every request is final; every final result was delivered at least once and, after
dedupe by webhook-id, exactly once; no claim produced two provider batches.

CI runs the short version; the long one (10,000 requests) runs with `pytest -m slow`.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import openai
import orjson
import pytest

from batchrelay import BatchRelay, RelayUnavailableError, Webhook
from batchrelay.emulator import start_emulator
from tests._receiver import WebhookReceiver
from tests._redis import RedisServer
from tests._stack import Stack
from tests.relay.harness import CHAT, EMB, SECRET, chat, fast_emulator_config, relay_settings


def run_chaos(tmp_path, n: int, *, receiver_down_s: float, chaos_s: float) -> dict[str, int]:
    rng = random.Random(n)
    redis_server = RedisServer(tmp_path / "redis", appendonly=True)
    (tmp_path / "redis").mkdir()
    (tmp_path / "logs").mkdir()
    redis_server.start()
    emu_config = fast_emulator_config(processing_rate_rps=2000, validating_delay_s=0.2)
    with start_emulator(emu_config) as emu, WebhookReceiver(fail_first_fraction=0.1) as receiver:
        emu.set_faults(
            http_error_rate=0.05,
            http_error_statuses=[500],
            retry_after_s=0.1,
            request_error_fraction=0.02,
            request_error_status=400,
            expire_next=1,
            expire_after_fraction=0.5,
            stuck_finalizing_next=1,
            stuck_finalizing_s=5,
        )
        settings = relay_settings(
            redis_server.url,
            emu,
            profile={"max_requests_per_batch": max(200, n // 10)},
            lease_s=4,
            http_timeout_s=2,
            tick_s=0.25,
            poll_interval_s=0.25,
            flush_max_wait_s=0.5,
            max_attempts=10,
            delivery_retry_schedule_s=[0.5, 1, 2, 4, 8, 8, 8, 8, 8, 8],
        )
        stack = Stack(settings, tmp_path / "logs")
        stack.supervised = True  # as compose's `restart: unless-stopped`
        producer = BatchRelay(settings)
        hook = Webhook(receiver.url + "/chaos")
        try:
            for name in ("w1", "w2"):
                stack.start_worker(name, concurrency=2)
            stack.start_beat()
            stop = threading.Event()
            events: Counter[str] = Counter()

            def chaos() -> None:
                deadline = time.monotonic() + chaos_s
                redis_restarted = receiver_down = False
                while not stop.wait(rng.uniform(1.0, 3.0)) and time.monotonic() < deadline:
                    elapsed = chaos_s - (deadline - time.monotonic())
                    # Down once deliveries are flowing, so it really holds some back.
                    if not receiver_down and receiver.ok_ids() and elapsed > chaos_s * 0.2:
                        receiver.down()
                        threading.Timer(receiver_down_s, receiver.up).start()
                        receiver_down = True
                        events["receiver down"] += 1
                        events["deliveries held back"] = n - len(receiver.ok_ids())
                    if not redis_restarted and elapsed > chaos_s * 0.5:
                        redis_server.restart()
                        redis_restarted = True
                        events["redis restarts"] += 1
                        continue
                    action = rng.choice(["pool", "pool", "worker", "beat"])
                    if action == "pool":
                        events["pool kills"] += stack.kill_children(rng.choice(["w1", "w2"]))
                    elif action == "worker":
                        stack.restart(rng.choice(["w1", "w2"]))
                        events["worker kills"] += 1
                    else:
                        stack.restart("beat")
                        events["beat kills"] += 1

            chaos_thread = threading.Thread(target=chaos, daemon=True)
            chaos_thread.start()
            # Requests keep arriving while processes die and Redis restarts, as from a web app:
            # a submit that meets a Redis restart is retried with the same idempotency keys.
            ids: list[str] = []
            for start in range(0, n, CHUNK):
                ids.extend(
                    submit_retrying(producer, chunk_items(start, min(n, start + CHUNK), hook))
                )
                time.sleep(chaos_s * 0.6 / (n / CHUNK))

            def done() -> bool:
                return receiver.wait_for(n, 0.01) and not chaos_thread.is_alive()

            stack.wait_until(done, 120 + n / 50, f"{n} deliveries under chaos")
            stop.set()
            chaos_thread.join()

            finals = Counter(producer.status(i).state for i in ids)
            by_id = receiver.by_id()
            assert receiver.verify_all(SECRET) >= len(ids)
            delivered_ok = receiver.ok_ids()
            lost = [i for i in ids if i not in delivered_ok]
            client = openai.OpenAI(base_url=emu.openai_base_url, api_key=emu.api_key)
            batches = list(client.batches.list(limit=100))
            claims = Counter(b.metadata["batchrelay_batch"] for b in batches)
            for rid in rng.sample(ids, min(200, n)):
                payload = orjson.loads(by_id[rid][-1].body)
                assert payload["id"] == rid
                if payload["status"] == "succeeded" and payload["endpoint"] == CHAT:
                    text = payload["response"]["body"]["choices"][0]["message"]["content"]
                    assert text.startswith("echo: c")
            figures = {
                "submitted": n,
                "final": sum(finals[s] for s in ("succeeded", "failed")),
                "succeeded": finals["succeeded"],
                "failed (provider 400s)": finals["failed"],
                "delivered": len(delivered_ok),
                "duplicates absorbed": sum(1 for d in receiver.received if d.status < 300)
                - len(delivered_ok),
                "failed attempts retried": sum(1 for d in receiver.received if d.status >= 300),
                "provider batches": len(batches),
                "claims with two batches": sum(1 for c in claims.values() if c > 1),
                **events,
                "unplanned exits restarted": len(stack.unplanned_exits),
                "lost": len(lost),
            }
            print("\nchaos: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
            assert figures["final"] == n, finals
            assert not lost
            assert figures["claims with two batches"] == 0, claims
            assert events["redis restarts"] == 1 and events["receiver down"] == 1
            assert events["deliveries held back"] > 0
            faults, stats = emu.faults(), emu.stats()
            assert faults["expire_next"] == 0 and faults["stuck_finalizing_next"] == 0, faults
            assert stats["batches_by_status"]["openai"].get("expired") == 1, stats
            assert stats["http_faults_injected"] > 0
            return figures
        finally:
            stack.stop()
            producer.close()
            redis_server.stop()


CHUNK = 250


def chunk_items(start: int, end: int, hook: Webhook) -> list[dict]:
    items = []
    for i in range(start, end):
        key = f"chaos-{i}"
        if i % 4:
            body = chat(f"c{i}")
            items.append({"endpoint": CHAT, "body": body, "callback": hook, "idempotency_key": key})
        else:
            body = {"model": "text-embedding-3-small", "input": f"e{i}"}
            items.append({"endpoint": EMB, "body": body, "callback": hook, "idempotency_key": key})
    return items


def submit_retrying(producer: BatchRelay, items: list[dict]) -> list[str]:
    """What a web app does when Redis is restarting: retry; the keys make it safe."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return producer.submit_many(items)
        except RelayUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_chaos_short(tmp_path):
    run_chaos(tmp_path, 2000, receiver_down_s=8, chaos_s=25)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_chaos_long(tmp_path):
    run_chaos(tmp_path, 10_000, receiver_down_s=20, chaos_s=90)
