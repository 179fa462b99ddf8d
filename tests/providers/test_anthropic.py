"""Anthropic-style message batches end to end: Anthropic itself (`x-api-key`,
`anthropic-version`) and a reseller serving them at `/v1/batches` with Bearer auth and other
vendors' models; plus reconciling after a crash, where batches carry no metadata."""

from __future__ import annotations

import time

import httpx
import pytest

from batchrelay.emulator import start_emulator
from batchrelay.worker.packing import aggregate, write_input
from batchrelay.worker.submission import create, submit_batch
from tests.providers.helpers import Scenario, message_text, messages
from tests.relay.harness import drive, fast_emulator_config

MESSAGES = "/v1/messages"
VERSION = "2023-06-01"


def native(emu, **extra):
    return {
        "name": "claude",
        "kind": "anthropic",
        "base_url": emu.anthropic_base_url,
        "api_key": emu.api_key,
        "models": ["claude-*"],
        **extra,
    }


@pytest.fixture
def anthropic_emu():
    config = fast_emulator_config(anthropic_versions=[VERSION], auth_headers=["x-api-key"])
    with start_emulator(config) as emu:
        yield emu


def test_native_results_of_every_type_reach_their_webhooks(relays, anthropic_emu, receiver):
    emu = anthropic_emu
    producer, worker = relays(emu, [native(emu)])
    Scenario(
        producer, worker, emu, receiver, endpoint=MESSAGES, body=messages, reply=message_text
    ).all(final_status=400, final_code="invalid_request_error", retry_status=529)
    # Every collected message batch was deleted at the provider (delete_provider_files).
    listed = httpx.get(
        emu.anthropic_base_url.rstrip("/") + "/v1/messages/batches",
        headers={"x-api-key": emu.api_key, "anthropic-version": VERSION},
    ).json()
    assert emu.stats()["batches_created"]["anthropic"] > 0 and listed["data"] == [], listed


def test_reseller_at_v1_batches_with_bearer_and_other_vendors_models(relays, receiver):
    config = fast_emulator_config(anthropic_batches_path="/v1/batches", auth_headers=["bearer"])
    with start_emulator(config) as emu:
        reseller = native(
            emu,
            name="reseller",
            batches_path="/v1/batches",
            auth_style="bearer",
            models=["gpt-*", "claude-*"],
        )
        producer, worker = relays(emu, [reseller])

        def body(text: str) -> dict:
            return messages(text, model="gpt-4o-mini")

        scenario = Scenario(
            producer, worker, emu, receiver, endpoint=MESSAGES, body=body, reply=message_text
        )
        scenario.all(final_status=400, final_code="invalid_request_error", retry_status=500)
        # Every call must go to /v1/batches: the native path fails from here on.
        emu.set_faults(http_error_rate=1.0, http_error_match="* /v1/messages/batches*")
        rid = next(iter(scenario.submit("model")))
        drive(worker, lambda: producer.status(rid).final)
        assert producer.result(rid)["response"]["body"]["model"] == "gpt-4o-mini"
        created = emu.stats()["batches_created"]
        assert created["anthropic"] >= 1 and created["openai"] == 0


def test_wrong_auth_style_or_version_is_refused_with_the_providers_message(relays, anthropic_emu):
    emu = anthropic_emu
    for extra, words in (
        ({"auth_style": "bearer"}, "x-api-key"),
        ({"anthropic_version": "2099-01-01"}, "anthropic-version"),
    ):
        producer, worker = relays(emu, [native(emu, **extra)], max_attempts=1)
        rid = producer.submit(MESSAGES, messages("refused"))
        drive(worker, lambda rid=rid, p=producer: p.status(rid).final)
        error = producer.result(rid)["error"]
        assert error["code"] == "batch_refused" and words in error["message"], error
        assert error["status_code"] in (400, 401)


def test_a_batch_created_before_a_crash_is_adopted_once_it_can_be_recognised(
    relays, anthropic_emu, receiver
):
    """The worker created the batch and died before recording it. Message batches carry no
    metadata: while the batch runs the claim waits instead of creating it again; once it has
    ended, its first result names one of our requests and it is adopted."""
    emu = anthropic_emu
    producer, worker = relays(emu, [native(emu)])
    emu.set_timings(processing_rate_rps=20)
    ids = producer.submit_many(
        [{"endpoint": MESSAGES, "body": messages(f"c{i}")} for i in range(10)]
    )
    [bid] = aggregate(worker, now=worker.now() + 10_000)
    adapter = worker.adapter("claude")
    create(worker, adapter, worker.batch(bid))  # ... and the worker dies here
    assert submit_batch(worker, bid) == "waiting"
    drive(worker, lambda: all(producer.status(i).final for i in ids))
    assert all(
        producer.result(i)["response"]["body"]["content"][0]["text"] == f"echo: c{n}"
        for n, i in enumerate(ids)
    )
    assert emu.stats()["batches_created"]["anthropic"] == 1


def test_a_batch_whose_written_requests_were_cancelled_is_still_recognised(
    relays, anthropic_emu, tmp_path
):
    """Requests cancelled after their lines were written still went to the provider; when
    the create's answer is lost, reconciliation must still see the batch as ours (matching
    the request's batch, not its state) instead of creating a second one."""
    emu = anthropic_emu
    producer, worker = relays(emu, [native(emu)])
    ids = producer.submit_many(
        [{"endpoint": MESSAGES, "body": messages(f"k{i}")} for i in range(3)]
    )
    [bid] = aggregate(worker, now=worker.now() + 10_000)
    adapter, rec = worker.adapter("claude"), worker.batch(bid)
    path = tmp_path / "input.jsonl"
    with path.open("wb") as out:  # the submitter writes the input...
        assert write_input(worker, adapter, bid, MESSAGES, out) == 3
    for rid in ids:  # ...every request is cancelled before the create starts...
        producer.cancel(rid)
    worker.set_batch(bid, lines=3, create_started=worker.now())
    adapter.create(input_ref=None, path=path, endpoint=MESSAGES, model=rec["model"], bid=bid)
    # ...and the create's answer is lost. The next attempt must adopt, not create again.
    deadline = time.monotonic() + 30
    while (outcome := submit_batch(worker, bid)) == "waiting" and time.monotonic() < deadline:
        time.sleep(0.1)  # the provider batch is still running: it cannot be told apart yet
    assert outcome == "adopted"
    assert emu.stats()["batches_created"]["anthropic"] == 1
    drive(worker, lambda: worker.batch(bid).get("state") == "done")
    assert {producer.status(i).state for i in ids} == {"cancelled"}


def test_an_ended_batch_of_the_same_size_is_told_apart_by_its_results(relays, anthropic_emu):
    """A same-size batch from someone else, and our own crashed create, both ended: only ours
    is adopted, read from the first line of its results."""
    emu = anthropic_emu
    producer, worker = relays(emu, [native(emu)])
    ids = producer.submit_many(
        [{"endpoint": MESSAGES, "body": messages(f"o{i}")} for i in range(5)]
    )
    [bid] = aggregate(worker, now=worker.now() + 10_000)
    headers = {"x-api-key": emu.api_key, "anthropic-version": VERSION}
    theirs = httpx.post(
        emu.base_url + "/v1/messages/batches",
        headers=headers,
        json={"requests": [{"custom_id": f"t-{i}", "params": messages(f"t{i}")} for i in range(5)]},
    ).json()
    adapter = worker.adapter("claude")
    drive(worker, lambda: adapter.retrieve(theirs["id"]).terminal, timeout=10)
    assert submit_batch(worker, bid) == "submitted"  # the foreign batch is not ours
    create_count = emu.stats()["batches_created"]["anthropic"]
    assert create_count == 2
    drive(worker, lambda: all(producer.status(i).final for i in ids))
    [b2] = aggregate(worker, now=worker.now() + 10_000) or [None]
    assert b2 is None
    # Now our own crashed create, ended before anyone looks: adopted at once.
    more = producer.submit_many(
        [{"endpoint": MESSAGES, "body": messages(f"p{i}")} for i in range(5)]
    )
    [bid] = aggregate(worker, now=worker.now() + 10_000)
    pb = create(worker, adapter, worker.batch(bid))
    drive(worker, lambda: adapter.retrieve(pb.id).terminal, timeout=10)
    assert submit_batch(worker, bid) == "adopted"
    assert worker.batch(bid)["pbatch"] == pb.id
    drive(worker, lambda: all(producer.status(i).final for i in more))
    assert emu.stats()["batches_created"]["anthropic"] == 3
