"""The emulator's OpenAI-style batch event webhooks: one signed event per terminal batch."""

from __future__ import annotations

import base64

import httpx
import orjson
import pytest

from tests._emulator import openai_client
from tests._receiver import WebhookReceiver
from tests.emulator.helpers import create_batch, request_line, wait_batch

SECRET = "whsec_" + base64.b64encode(b"emulator-batch-webhook-secret-32").decode()


def events(rx: WebhookReceiver, n: int) -> list[dict]:
    assert rx.wait_for(n, 15), rx.received
    assert rx.verify_all(SECRET) == len(rx.received)
    return [orjson.loads(d.body) for d in rx.received]


def test_completed_failed_and_cancelled_batches_each_send_one_event(emulator_factory):
    emu = emulator_factory(validating_delay_s=0.05, finalizing_delay_s=0.05)
    with WebhookReceiver() as rx, openai_client(emu) as client:
        shown = emu.set_webhook(rx.url + "/openai", SECRET)
        assert shown == {"url": rx.url + "/openai", "secret_set": True, "sent": 0, "failed": 0}
        done = create_batch(client, [request_line(i) for i in range(3)])
        wait_batch(client, done.id)
        emu.set_faults(fail_validation_next=1, fail_validation_code="invalid_json_line")
        failed = create_batch(client, [request_line(0)])
        emu.set_timings(validating_delay_s=5)
        cancelled = create_batch(client, [request_line(0)])
        client.batches.cancel(cancelled.id)
        got = events(rx, 3)
    by_batch = {e["data"]["id"]: e for e in got}
    assert by_batch[done.id]["type"] == "batch.completed"
    assert by_batch[failed.id]["type"] == "batch.failed"
    assert by_batch[cancelled.id]["type"] == "batch.cancelled"
    for event in got:
        assert event["object"] == "event" and event["id"].startswith("evt_")
    assert all(d.msg_id.startswith("wh_") for d in rx.received)
    assert len({d.msg_id for d in rx.received}) == 3


def test_a_refused_event_is_retried_with_the_same_webhook_id(emulator_factory):
    emu = emulator_factory(validating_delay_s=0.05, finalizing_delay_s=0.05)
    with WebhookReceiver(fail_first_fraction=1.0) as rx, openai_client(emu) as client:
        emu.set_webhook(rx.url, SECRET)
        batch = create_batch(client, [request_line(0)])
        wait_batch(client, batch.id)
        assert rx.wait_for(1, 15)
    first, second = rx.received[:2]
    assert first.status == 500 and second.status == 200
    assert first.msg_id == second.msg_id


@pytest.mark.parametrize("secret", ["not-whsec", "whsec_%%%"])
def test_a_bad_secret_is_refused(emulator_factory, secret):
    emu = emulator_factory()
    reply = httpx.put(
        emu.base_url + "/_emulator/webhook",
        json={"url": "http://127.0.0.1:9/x", "secret": secret},
        headers={"Authorization": f"Bearer {emu.api_key}"},
    )
    assert reply.status_code == 400, reply.text
    assert emu.set_webhook(None)["url"] is None
