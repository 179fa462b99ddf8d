"""Mistral through the deployed processes: `celery -A batchrelay.worker worker` and `beat` as
real subprocesses, real Redis, the emulator's /mistral routes over HTTP and a webhook
receiver. Chat and embedding jobs (inline, and uploaded as input files) go through API faults
(500s and 429s), a job ending TIMEOUT_EXCEEDED part-way (its unfinished requests re-pooled and
sent in a later job) and a cut result download."""

from __future__ import annotations

import time
from collections import Counter, defaultdict

import orjson

from batchrelay import BatchRelay, Webhook
from batchrelay.emulator import mistral, start_emulator
from batchrelay.emulator.content import embedding_vector
from batchrelay.worker.context import Relay
from tests._receiver import WebhookReceiver
from tests._stack import Stack
from tests.providers.helpers import chat_text
from tests.relay.harness import CHAT, EMB, SECRET, chat, fast_emulator_config, relay_settings

CHAT_MODEL, EMBED_MODEL = "mistral-small-latest", "mistral-embed"
N_CHAT, N_EMBED, PER_JOB = 200, 100, 25
PAD = "p" * 400  # a full chat job (~13 KB) is over `inline_max_bytes`: uploaded


def embed(text: str) -> dict:
    return {"model": EMBED_MODEL, "input": [text]}


def test_mistral_through_worker_and_beat(redis_url, tmp_path):
    config = fast_emulator_config(auth_headers=["bearer"], embedding_dim=8)
    with start_emulator(config) as emu, WebhookReceiver() as receiver:
        profile = {
            "name": "mistral",
            "kind": "mistral",
            "base_url": emu.mistral_base_url,
            "models": ["mistral-*"],
            "max_requests_per_batch": PER_JOB,
            "inline_max_bytes": 4096,
        }
        settings = relay_settings(
            redis_url,
            emu,
            profile=profile,
            lease_s=3,
            http_timeout_s=2,
            tick_s=0.25,
            delete_provider_files=False,
        )
        emu.set_faults(
            expire_next=1,  # the first job ends TIMEOUT_EXCEEDED half-way
            expire_after_fraction=0.5,
            download_cut_fraction=0.5,
            download_cut_next=1,
            http_error_next=4,
            http_error_statuses=[500, 429],
            retry_after_s=0.05,
        )
        stack = Stack(settings, tmp_path)
        producer = BatchRelay(settings)
        relay = Relay(settings)
        try:
            stack.start_worker("w1")
            stack.start_beat()
            hook = Webhook(receiver.url + "/in")
            texts = [(CHAT, f"note {i} {PAD}") for i in range(N_CHAT)]
            texts += [(EMB, f"vector {i}") for i in range(N_EMBED)]
            items = [
                {
                    "endpoint": endpoint,
                    "body": chat(text, CHAT_MODEL) if endpoint == CHAT else embed(text),
                    "callback": hook,
                }
                for endpoint, text in texts
            ]
            ids = dict(zip(producer.submit_many(items), texts, strict=True))
            stack.wait_until(lambda: receiver.wait_for(len(ids), 0.01), 90, "every webhook")
            # Every request's record is final too (its webhook is sent after it is stored).
            stack.wait_until(
                lambda: all(producer.status(rid).final for rid in ids), 30, "final records"
            )
            stats = emu.stats()
            assert stats["http_faults_injected"] == 4 and stats["downloads_cut"] == 1, stats

            # Deduplicated on webhook-id: each request has one id, every delivery of it
            # verifies and carries the same single result.
            assert receiver.verify_all(SECRET) >= len(ids)
            by_id = receiver.by_id()
            assert set(by_id) == set(ids)
            assert receiver.ok_ids() == set(ids)
            payloads = {}
            for rid, deliveries in by_id.items():
                bodies = {d.body for d in deliveries if 200 <= d.status < 300}
                assert len(bodies) == 1, (rid, bodies)
                payloads[rid] = orjson.loads(bodies.pop())

            jobs = [b for b in emu.engine.store.list_batches("openai") if b.flavor == "mistral"]
            [timed_out] = [j for j in jobs if j.run_end_kind == "expired"]
            assert mistral.job_object(timed_out, time.time())["status"] == "TIMEOUT_EXCEEDED"
            timed_out_bid = timed_out.metadata["batchrelay_batch"]
            assert 0 < timed_out.processed < timed_out.total

            re_pooled = Counter()
            for rid, (endpoint, text) in ids.items():
                payload = payloads[rid]
                assert payload["status"] == "succeeded", payload
                body = payload["response"]["body"]
                if endpoint == CHAT:
                    assert chat_text(body) == f"echo: {text}"
                else:
                    assert body["data"][0]["embedding"] == embedding_vector(text, 8)
                record = producer.status(rid)
                assert record.state == "succeeded" and record.attempt == payload["attempts"]
                if payload["attempts"] > 1:
                    # Sent again in a later job, after the first ended TIMEOUT_EXCEEDED.
                    assert record.last_error["code"] == "batch_expired", record
                    assert record.batch_id != timed_out_bid
                    assert record.provider_batch_id != timed_out.id
                    re_pooled[record.batch_id] += 1
            # Exactly the requests the timed-out job never ran came back, and finished.
            assert sum(re_pooled.values()) == timed_out.total - timed_out.processed > 0

            # At the provider: each job owned by one claim, no claim with two jobs, and every
            # request sent once plus once more for each re-pooled one.
            claims = Counter(j.metadata["batchrelay_batch"] for j in jobs)
            assert set(claims.values()) == {1}, claims
            assert len(jobs) == stats["batches_created"]["mistral"]
            assert sum(j.total for j in jobs) == len(ids) + sum(re_pooled.values())
            owners = {
                k.decode(): v.decode()
                for k, v in relay.redis.hgetall(relay.keys.pbatches("mistral")).items()
            }
            assert owners == {j.id: j.metadata["batchrelay_batch"] for j in jobs}
            kinds: dict[str, set[bool]] = defaultdict(set)
            for j in jobs:
                kinds[j.endpoint].add(bool(j.input_files))
            assert kinds[CHAT] >= {True} and kinds[EMB] == {False}, kinds  # uploaded, inline
            assert stats["files_uploaded"] >= 1
        finally:
            stack.stop()
            producer.close()
            relay.close()
