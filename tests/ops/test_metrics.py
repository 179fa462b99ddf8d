"""The metrics exporter and provider webhooks, through a live stack: `batchrelay metrics`,
real worker and beat processes, the emulator sending OpenAI's and Gemini's batch webhooks."""

from __future__ import annotations

import base64
import time

import pytest
import redis

from batchrelay import BatchRelay, Webhook
from batchrelay.emulator import start_emulator
from tests._receiver import WebhookReceiver
from tests._stack import Stack
from tests.ops._exporter import exporter, value
from tests.relay.harness import CHAT, chat, fast_emulator_config, relay_settings

HOOK_SECRET = "whsec_" + base64.b64encode(b"provider-webhook-secret-32-bytes").decode()
N = 20


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := condition():
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.timeout(180)
def test_provider_webhooks_wake_batches_and_a_scrape_shows_the_run(redis_url, tmp_path):
    """With a 300 s poll interval, results arrive in seconds because the provider's webhook
    makes the batch due; the exporter then shows every counter of the run."""
    config = fast_emulator_config(validating_delay_s=0.5, finalizing_delay_s=0.2)
    with start_emulator(config) as emu, WebhookReceiver() as receiver:
        settings = relay_settings(
            redis_url,
            emu,
            profile={"webhook_secret": HOOK_SECRET},
            poll_interval_s=300,
            poll_max_interval_s=300,
            tick_s=0.25,
            lease_s=4,
        )
        stack = Stack(settings, tmp_path)
        producer = BatchRelay(settings)
        try:
            with exporter(settings, tmp_path) as metrics:
                emu.set_webhook(metrics.hook_url("emu"), HOOK_SECRET)
                stack.start_worker("w1")
                stack.start_beat()
                hook = Webhook(receiver.url + "/in")
                ids = [producer.submit(CHAT, chat(f"q {i}"), callback=hook) for i in range(N)]
                stack.wait_until(lambda: receiver.wait_for(N, 0.01), 60, "webhooks")
                assert set(receiver.ok_ids()) == set(ids)

                def settled():
                    s = metrics.scrape()
                    done = value(s, "batchrelay_webhook_attempts_total", outcome="delivered")
                    return s if done == N else None

                scrape = wait_for(settled, 15, "the deliveries to be counted")
        finally:
            stack.stop()
            producer.close()
    assert value(scrape, "batchrelay_up") == 1
    assert value(scrape, "batchrelay_requests_total", status="succeeded") == N
    assert value(scrape, "batchrelay_requests_total", status="failed") == 0
    assert value(scrape, "batchrelay_provider_webhooks_total", outcome="due_now") >= 1
    calls = {"provider": "emu", "status": "200"}
    assert value(scrape, "batchrelay_provider_calls_total", call="POST /v1/batches", **calls) >= 1
    assert value(scrape, "batchrelay_provider_calls_total", call="POST /v1/files", **calls) >= 1
    assert value(scrape, "batchrelay_provider_calls_total", call="GET /v1/batches/{id}", **calls)
    assert value(scrape, "batchrelay_submit_to_final_seconds_count") == N
    assert value(scrape, "batchrelay_final_to_delivered_seconds_count") == N
    # Polling every 300 s would have taken minutes; the webhook made it seconds.
    assert value(scrape, "batchrelay_submit_to_final_seconds_sum") / N < 30
    assert value(scrape, "batchrelay_requests_pending", model="gpt-4o-mini") == 0
    assert value(scrape, "batchrelay_deliveries_due") == 0


@pytest.mark.timeout(180)
def test_gemini_batch_webhooks_wake_gemini_batches(redis_url, tmp_path):
    """The same for a `kind = "gemini"` profile: the emulator sends the Gemini API's signed
    `batch.succeeded` event for a Gemini batch, and with a 300 s poll interval its results
    arrive in seconds."""
    config = fast_emulator_config(validating_delay_s=0.5, finalizing_delay_s=0.2)
    with start_emulator(config) as emu, WebhookReceiver() as receiver:
        profile = {
            "name": "gem",
            "kind": "gemini",
            "base_url": emu.base_url,
            "models": ["gemini-*"],
            "webhook_secret": HOOK_SECRET,
        }
        settings = relay_settings(
            redis_url,
            emu,
            profile=profile,
            poll_interval_s=300,
            poll_max_interval_s=300,
            tick_s=0.25,
            lease_s=4,
        )
        stack = Stack(settings, tmp_path)
        producer = BatchRelay(settings)
        try:
            with exporter(settings, tmp_path) as metrics:
                emu.set_webhook(metrics.hook_url("gem"), HOOK_SECRET)
                stack.start_worker("w1")
                stack.start_beat()
                hook = Webhook(receiver.url + "/in")
                path = "/v1beta/models/gemini-2.5-flash:generateContent"
                body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
                ids = [producer.submit(path, body, callback=hook) for _ in range(N)]
                stack.wait_until(lambda: receiver.wait_for(N, 0.01), 60, "webhooks")
                assert set(receiver.ok_ids()) == set(ids)
                scrape = metrics.scrape()
        finally:
            stack.stop()
            producer.close()
    assert value(scrape, "batchrelay_provider_webhooks_total", provider="gem", outcome="due_now")
    assert value(scrape, "batchrelay_provider_webhooks_total", outcome="refused") == 0
    assert value(scrape, "batchrelay_submit_to_final_seconds_sum") / N < 30


def test_a_scrape_costs_the_same_whatever_the_backlog(redis_url, tmp_path):
    """Pending requests are counted, not read: the Redis commands of one scrape do not grow
    with the backlog."""
    settings = relay_settings(
        redis_url,
        type("E", (), {"openai_base_url": "http://127.0.0.1:9/v1", "api_key": "k"}),
        profile={"enqueued_token_budget": {"gpt-4o-mini": 50_000}},
    )
    client = redis.Redis.from_url(redis_url)
    with BatchRelay(settings) as producer, exporter(settings, tmp_path) as metrics:

        def commands_of_a_scrape():
            before = client.info("stats")["total_commands_processed"]
            scrape = metrics.scrape()
            return client.info("stats")["total_commands_processed"] - before - 1, scrape

        producer.submit_many([{"endpoint": CHAT, "body": chat(f"a {i}")} for i in range(10)])
        small, _ = commands_of_a_scrape()
        items = [{"endpoint": CHAT, "body": chat(f"b {i}")} for i in range(3000)]
        producer.submit_many(items)
        large, scrape = commands_of_a_scrape()
    assert large == small, (small, large)
    assert value(scrape, "batchrelay_requests_pending", profile="emu", model="gpt-4o-mini") == 3010
    assert value(scrape, "batchrelay_oldest_pending_age_seconds") > 0
    assert value(scrape, "batchrelay_token_budget", profile="emu", model="gpt-4o-mini") == 50_000
    assert value(scrape, "batchrelay_tokens_reserved", profile="emu", model="gpt-4o-mini") == 0
