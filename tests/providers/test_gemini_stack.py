"""Gemini through the deployed processes: `celery -A batchrelay.worker worker` and `beat` as
real subprocesses, real Redis, the emulator over HTTP and a webhook receiver. Inline batches
and a file batch (one request over the 20 MB create limit, uploaded in 8 MiB chunks) go
through API faults, an expired batch (re-pooled and sent again) and a cut result download."""

from __future__ import annotations

import orjson

from batchrelay import BatchRelay, Webhook
from batchrelay.emulator import start_emulator
from tests._receiver import WebhookReceiver
from tests._stack import Stack
from tests.relay.harness import SECRET, fast_emulator_config, relay_settings

MB = 1024 * 1024


def contents(text: str) -> dict:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}]}


def test_gemini_through_worker_and_beat(redis_url, tmp_path):
    with start_emulator(fast_emulator_config()) as emu, WebhookReceiver() as receiver:
        profile = {
            "name": "gemini",
            "kind": "gemini",
            "base_url": emu.base_url,
            "models": ["gemini-*"],
            "max_requests_per_batch": 20,
            "max_line_bytes": 30 * MB,
        }
        settings = relay_settings(
            redis_url, emu, profile=profile, lease_s=3, http_timeout_s=2, tick_s=0.25
        )
        emu.set_faults(
            expire_next=1,
            expire_after_fraction=0.5,
            download_cut_fraction=0.5,
            download_cut_next=1,
            http_error_next=3,
            retry_after_s=0.05,
        )
        stack = Stack(settings, tmp_path)
        producer = BatchRelay(settings)
        try:
            stack.start_worker("w1")
            stack.start_beat()
            hook = Webhook(receiver.url + "/in")
            texts = {
                f"note {i}": "/v1beta/models/gemini-2.5-flash:generateContent" for i in range(60)
            }
            big = "x" * (21 * MB)  # alone over the inline limit: a file batch
            texts[big] = "/v1/models/gemini-2.5-pro:generateContent"
            items = [
                {"endpoint": path, "body": contents(text), "callback": hook}
                for text, path in texts.items()
            ]
            ids = dict(zip(producer.submit_many(items), texts, strict=True))
            stack.wait_until(lambda: receiver.wait_for(len(ids), 0.01), 90, "every webhook")
            assert receiver.verify_all(SECRET) >= len(ids)
            by_id = receiver.by_id()
            expired = 0
            for rid, text in ids.items():
                payload = orjson.loads(by_id[rid][-1].body)
                assert payload["status"] == "succeeded", payload
                body = payload["response"]["body"]
                assert body["candidates"][0]["content"]["parts"][0]["text"] == f"echo: {text}"
                if payload["attempts"] > 1:
                    expired += 1
                    assert producer.status(rid).last_error["code"] == "batch_expired"
            assert 0 < expired <= 20
            stats = emu.stats()
            assert stats["downloads_cut"] == 1 and stats["http_faults_injected"] > 0, stats
            assert stats["files_uploaded"] >= 1
        finally:
            stack.stop()
            producer.close()
