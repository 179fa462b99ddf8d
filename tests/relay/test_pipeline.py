"""The relay's pipeline end to end, each worker step run inline: real Redis, the emulator over
HTTP, a real webhook receiver. (The Celery-driven version is test_stack.py.)"""

from __future__ import annotations

import time
from collections import Counter

import orjson
import pytest

from batchrelay import BatchRelay, CancelError, CeleryTask, Webhook
from batchrelay.emulator import start_emulator
from batchrelay.producer.keys import Keys, tag_of
from batchrelay.worker.collection import collect_batch
from batchrelay.worker.context import Relay
from batchrelay.worker.delivery import dead_letters, deliver_chunk, lease_due, replay
from batchrelay.worker.packing import aggregate
from batchrelay.worker.providers import ProviderError
from batchrelay.worker.submission import submit_batch
from tests._receiver import WebhookReceiver
from tests.relay.harness import (
    CHAT,
    EMB,
    SECRET,
    all_final,
    chat,
    drive,
    fast_emulator_config,
    relay_settings,
    tick,
)


@pytest.fixture
def emu():
    with start_emulator(fast_emulator_config()) as server:
        yield server


@pytest.fixture
def receiver():
    with WebhookReceiver() as r:
        yield r


@pytest.fixture
def stack(redis_url, emu):
    def make(**overrides):
        settings = relay_settings(redis_url, emu, **overrides)
        producer, worker = BatchRelay(settings), Relay(settings)
        made.append((producer, worker))
        return producer, worker

    made: list = []
    yield make
    for producer, worker in made:
        producer.close()
        worker.close()


def provider_batches(emu) -> list[dict]:
    import openai

    client = openai.OpenAI(base_url=emu.openai_base_url, api_key=emu.api_key)
    return [b.model_dump() for b in client.batches.list(limit=100)]


def test_round_trip_joins_each_result_to_its_request(stack, emu, receiver):
    from batchrelay.emulator.content import embedding_vector

    producer, worker = stack(profile={"max_requests_per_batch": 70})
    hook = Webhook(receiver.url + "/hooks")
    sent: dict[str, tuple[str, str, str]] = {}
    items = []
    for i in range(300):
        model = ["gpt-4o-mini", "gpt-4.1-nano"][i % 2]
        items.append({"endpoint": CHAT, "body": chat(f"question {i}", model), "callback": hook})
    for i in range(100):
        model = ["text-embedding-3-small", "text-embedding-3-large"][i % 2]
        body = {"model": model, "input": f"passage {i}"}
        items.append({"endpoint": EMB, "body": body, "metadata": {"n": i}})
    ids = producer.submit_many(items)
    for rid, item in zip(ids, items, strict=True):
        text = item["body"].get("input") or item["body"]["messages"][0]["content"]
        sent[rid] = (item["endpoint"], item["body"]["model"], text)

    drive(worker, lambda: receiver.wait_for(300, timeout=0.01) and all_final(producer, ids)())

    for rid in ids:
        result = producer.result(rid, timeout=1)
        endpoint, model, text = sent[rid]
        assert (result["id"], result["status"], result["endpoint"]) == (rid, "succeeded", endpoint)
        body = result["response"]["body"]
        if endpoint == CHAT:
            assert body["choices"][0]["message"]["content"] == f"echo: {text}"
        else:
            assert body["data"][0]["embedding"] == embedding_vector(text, 8)
            assert result["metadata"] == {"n": int(text.split()[1])}
        assert result["usage"]
    deliveries = receiver.by_id()
    assert set(deliveries) == {rid for rid in ids if sent[rid][0] == CHAT}
    assert receiver.verify_all(SECRET) >= len(deliveries)
    for rid, got in deliveries.items():
        payload = orjson.loads(got[0].body)
        assert payload["id"] == rid and got[0].headers["webhook-id"] == rid
        assert payload["response"]["body"]["choices"][0]["message"]["content"].endswith(
            sent[rid][2]
        )
        assert payload["batch"]["provider_batch_id"].startswith("batch_")
    batches = provider_batches(emu)
    assert len(batches) == 8  # 4 groups; each chat group of 150 split at 70 requests
    assert all(b["metadata"]["batchrelay_batch"].startswith("b_") for b in batches)
    # Input, output and error files are deleted once collected (delete_provider_files).
    assert emu.stats()["files_uploaded"] == 8 and emu.stats()["files_stored"] == 0


def test_request_errors_are_final_or_retried_by_class(stack, emu):
    producer, worker = stack(max_attempts=10)  # 0.3**10: a 500 streak cannot exhaust it
    emu.set_faults(request_error_fraction=0.3, request_error_status=400)
    ids = producer.submit_many([{"endpoint": CHAT, "body": chat(f"q{i}")} for i in range(60)])
    drive(worker, all_final(producer, ids))
    results = [producer.result(i) for i in ids]
    failed = [r for r in results if r["status"] == "failed"]
    assert 5 < len(failed) < 40
    for r in failed:
        assert r["error"]["status_code"] == 400 and r["error"]["message"]
        assert r["attempts"] == 1

    emu.set_faults(request_error_fraction=0.3, request_error_status=500)
    ids = producer.submit_many([{"endpoint": CHAT, "body": chat(f"r{i}")} for i in range(60)])
    drive(worker, all_final(producer, ids))
    results = [producer.result(i) for i in ids]
    assert all(r["status"] == "succeeded" for r in results)
    assert any(r["attempts"] > 1 for r in results)


def test_retries_stop_at_max_attempts(stack, emu):
    producer, worker = stack(max_attempts=2)
    emu.set_faults(request_error_fraction=1.0, request_error_status=429)
    ids = producer.submit_many([{"endpoint": CHAT, "body": chat(f"q{i}")} for i in range(5)])
    drive(worker, all_final(producer, ids))
    for rid in ids:
        r = producer.result(rid)
        assert (r["status"], r["attempts"], r["error"]["status_code"]) == ("failed", 2, 429)


def test_expired_batch_delivers_finished_lines_and_repools_the_rest(stack, emu):
    producer, worker = stack()
    emu.set_faults(expire_next=1, expire_after_fraction=0.5)
    ids = producer.submit_many([{"endpoint": CHAT, "body": chat(f"e{i}")} for i in range(100)])
    drive(worker, all_final(producer, ids))
    attempts = Counter(producer.status(i).attempt for i in ids)
    assert all(producer.status(i).state == "succeeded" for i in ids)
    assert attempts[1] >= 30 and attempts[2] >= 30, attempts
    statuses = Counter(b["status"] for b in provider_batches(emu))
    assert statuses == {"expired": 1, "completed": 1}


def test_token_limit_failure_requeues_and_backs_off(stack, emu):
    producer, worker = stack()
    emu.set_faults(fail_validation_next=1, fail_validation_code="token_limit_exceeded")
    ids = producer.submit_many([{"endpoint": CHAT, "body": chat(f"t{i}")} for i in range(20)])
    for _ in range(100):
        tick(worker)
        if worker.redis.exists(Keys().backoff(tag_of(ids[0]))):
            break
        time.sleep(0.02)
    assert worker.redis.exists(Keys().backoff(tag_of(ids[0])))
    assert all(producer.status(i).state == "pending" for i in ids)
    drive(worker, all_final(producer, ids))
    assert all(producer.status(i).state == "succeeded" for i in ids)
    assert all(producer.status(i).attempt == 1 for i in ids)


def test_model_the_provider_rejects_fails_every_line_with_its_error(stack):
    producer, worker = stack()
    ids = producer.submit_many([{"endpoint": CHAT, "body": chat("x", "nomodel-1")}] * 3)
    drive(worker, all_final(producer, ids))
    for rid in ids:
        r = producer.result(rid)
        assert r["status"] == "failed" and r["error"]["code"] == "model_not_found"
        assert r["error"]["line"] in (1, 2, 3)


def test_a_batch_created_before_a_crash_is_adopted_not_created_again(stack, emu):
    producer, worker = stack()
    ids = producer.submit_many([{"endpoint": CHAT, "body": chat(f"c{i}")} for i in range(10)])
    [bid] = aggregate(worker, now=worker.now() + 10_000)
    rec = worker.batch(bid)
    adapter = worker.adapter("emu")
    # The first worker uploaded and created, then died before recording the provider id.
    import tempfile
    from pathlib import Path

    from batchrelay.worker.packing import write_input

    worker.set_batch(bid, create_started=worker.now())  # as create() records before creating
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.jsonl"
        with path.open("wb") as out:
            write_input(worker, adapter, bid, CHAT, out)
        file_id = adapter.upload(path, model=rec["model"])
        adapter.create(input_ref=file_id, path=path, endpoint=CHAT, model=rec["model"], bid=bid)
    assert submit_batch(worker, bid) == "adopted"
    drive(worker, all_final(producer, ids))
    assert len(provider_batches(emu)) == 1


def test_api_errors_and_cut_downloads_do_not_lose_or_double_anything(stack, emu):
    producer, worker = stack(profile={"max_requests_per_batch": 25})
    emu.set_faults(
        http_error_rate=0.3,
        http_error_statuses=[429, 500, 503],
        retry_after_s=0.05,
        download_cut_fraction=0.5,
        download_cut_next=3,
    )
    ids = producer.submit_many([{"endpoint": CHAT, "body": chat(f"f{i}")} for i in range(100)])
    drive(worker, all_final(producer, ids), swallow=(ProviderError,), timeout=60)
    stats = emu.stats()
    assert stats["http_faults_injected"] >= 3 and stats["downloads_cut"] == 3, stats
    emu.reset_faults()
    assert all(producer.result(i)["status"] == "succeeded" for i in ids)
    batches = provider_batches(emu)
    claimed = {b["metadata"]["batchrelay_batch"] for b in batches}
    assert len(claimed) == len(batches)  # never two provider batches for one claim


def test_a_create_refused_with_429_is_left_to_a_later_tick(stack, emu):
    """A 429 is a refusal the call already retried with the provider's Retry-After; the
    create is not retried again around it (that could hold a worker for many minutes)."""
    producer, worker = stack()
    rid = producer.submit(CHAT, chat("throttled"))
    time.sleep(worker.settings.flush_max_wait_s)
    [bid] = aggregate(worker)
    emu.set_faults(
        http_error_next=100,
        http_error_match="POST /v1/batches",
        http_error_statuses=[429],
        retry_after_s=0.01,
    )
    with pytest.raises(ProviderError) as info:
        submit_batch(worker, bid)
    assert info.value.status == 429
    assert emu.stats()["http_faults_injected"] == worker.settings.http_max_retries + 1
    emu.reset_faults()
    drive(worker, all_final(producer, [rid]))  # due again one lease later
    assert provider_batches(emu)[0]["request_counts"]["total"] == 1


def test_collecting_twice_changes_nothing(stack, receiver):
    producer, worker = stack()
    hook = Webhook(receiver.url)
    ids = producer.submit_many(
        [{"endpoint": CHAT, "body": chat(f"d{i}"), "callback": hook} for i in range(5)]
    )
    drive(worker, lambda: receiver.wait_for(5, timeout=0.01))
    bid = producer.status(ids[0]).batch_id
    worker.set_batch(bid, state="collecting")
    assert collect_batch(worker, bid)["stale"] == 5
    for _ in range(5):
        tick(worker)
    assert len(receiver.received) == 5


def test_a_chunk_that_outlived_its_lease_is_sent_once_by_its_newer_holder(stack, receiver):
    from concurrent.futures import ThreadPoolExecutor

    producer, worker = stack()
    receiver.delay_s = 0.3  # both holders are sending at the same time
    hook = Webhook(receiver.url)
    ids = producer.submit_many(
        [{"endpoint": CHAT, "body": chat(f"q{i}"), "callback": hook} for i in range(3)]
    )
    drive(worker, all_final(producer, ids), deliver=False)
    now = worker.now()
    [stale] = lease_due(worker, now)  # this task waits in the queue past its lease...
    [fresh] = lease_due(worker, now + worker.lease_ms() + 1)  # ...so the next tick re-leases
    assert sorted(stale.request_ids) == sorted(fresh.request_ids) == sorted(ids)
    with ThreadPoolExecutor(2) as pool:
        runs = [
            pool.submit(deliver_chunk, worker, c.request_ids, c.leased_until_ms, _no_task)
            for c in (stale, fresh)
        ]
        outcomes = [r.result() for r in runs]
    assert outcomes == [Counter(stale=3), Counter(delivered=3)]
    assert sorted(receiver.by_id()) == sorted(ids)
    assert len(receiver.received) == 3


def test_a_holder_that_started_in_time_keeps_its_deliveries(stack, receiver):
    producer, worker = stack()
    receiver.delay_s = 0.5
    ids = producer.submit_many(
        [
            {"endpoint": CHAT, "body": chat(f"k{i}"), "callback": Webhook(receiver.url)}
            for i in range(2)
        ]
    )
    drive(worker, all_final(producer, ids), deliver=False)
    [chunk] = lease_due(worker)
    assert deliver_chunk(worker, chunk.request_ids, chunk.leased_until_ms, _no_task) == Counter(
        delivered=2
    )
    assert lease_due(worker, worker.now() + worker.lease_ms() + 1) == []
    assert len(receiver.received) == 2


def _no_task(name, payload, queue):
    raise AssertionError(f"unexpected Celery callback {name}")


def test_webhook_retries_dead_letters_and_replay(stack, receiver):
    producer, worker = stack()
    receiver.fail_first_fraction = 0.5
    gone: set[str] = set()
    receiver.status_for = lambda rid: 410 if rid in gone else None
    hook = Webhook(receiver.url)
    ids = producer.submit_many(
        [{"endpoint": CHAT, "body": chat(f"w{i}"), "callback": hook} for i in range(20)]
    )
    gone.add(ids[0])
    drive(worker, lambda: receiver.wait_for(19, timeout=0.01) and bool(dead_letters(worker)))
    assert {d["id"] for d in dead_letters(worker)} == {ids[0]}
    assert "410" in dead_letters(worker)[0]["last_error"]
    assert producer.status(ids[0]).delivery == "dead"
    assert any(len(v) > 1 for v in receiver.by_id().values())  # some needed a retry
    gone.clear()
    assert replay(worker) == 1
    drive(worker, lambda: receiver.wait_for(20, timeout=0.01))
    assert producer.status(ids[0]).delivery == "delivered"
    assert not dead_letters(worker)


def test_unreachable_receiver_exhausts_the_schedule(stack, receiver):
    producer, worker = stack()
    receiver.down()
    rid = producer.submit(CHAT, chat("nobody home"), callback=Webhook(receiver.url))
    drive(worker, lambda: bool(dead_letters(worker)))
    st = producer.status(rid)
    assert (st.delivery, st.delivery_attempts) == ("dead", 4)


def test_celery_task_callback_gets_the_same_payload(stack):
    producer, worker = stack()
    got: list = []
    rid = producer.submit(CHAT, chat("via celery"), callback=CeleryTask("app.on_result", "results"))
    drive(worker, lambda: bool(got), send_task=lambda *a: got.append(a))
    name, payload, queue = got[0]
    assert (name, queue) == ("app.on_result", "results")
    assert payload == producer.result(rid)


def test_cancel_before_claim_is_never_sent(stack, emu):
    producer, worker = stack()
    keep = producer.submit(CHAT, chat("keep"))
    drop = producer.submit(CHAT, chat("drop"))
    producer.cancel(drop)
    drive(worker, all_final(producer, [keep]))
    assert producer.status(drop).state == "cancelled"
    [batch] = provider_batches(emu)
    assert batch["request_counts"]["total"] == 1


def test_cancel_after_the_claim_until_the_batch_is_submitted(stack, emu, receiver):
    producer, worker = stack()
    hook = Webhook(receiver.url)
    ids = producer.submit_many(
        [{"endpoint": CHAT, "body": chat(f"c{i}"), "callback": hook} for i in range(3)]
    )
    [bid] = aggregate(worker, worker.now() + 60_000)  # claimed, not yet sent: still cancellable
    assert producer.status(ids[0]).state == "in_batch"
    producer.cancel(ids[0])
    assert producer.status(ids[0]).state == "cancelled"
    assert submit_batch(worker, bid) == "submitted"
    with pytest.raises(CancelError, match="already submitted"):
        producer.cancel(ids[1])
    drive(worker, lambda: receiver.wait_for(2, timeout=0.01))
    [batch] = provider_batches(emu)
    assert batch["request_counts"]["total"] == 2  # the cancelled line was left out
    assert sorted(receiver.by_id()) == sorted(ids[1:])
    assert producer.result(ids[0], timeout=1)["status"] == "cancelled"


def test_a_claimed_batch_whose_requests_were_all_cancelled_is_never_created(stack, emu):
    producer, worker = stack()
    ids = producer.submit_many([{"endpoint": CHAT, "body": chat(f"z{i}")} for i in range(2)])
    [bid] = aggregate(worker, worker.now() + 60_000)
    for rid in ids:
        producer.cancel(rid)
    assert submit_batch(worker, bid) == "empty"
    assert provider_batches(emu) == [] and emu.stats()["files_uploaded"] == 0
    assert worker.batch(bid)["state"] == "done"


def test_stuck_batch_is_reported_not_dropped(stack, emu, caplog):
    from batchrelay.worker.sweep import stuck_batches, sweep

    producer, worker = stack(stuck_after_s=0.3)
    emu.set_faults(stuck_finalizing_next=1, stuck_finalizing_s=2.0)
    ids = producer.submit_many([{"endpoint": CHAT, "body": chat(f"s{i}")} for i in range(5)])
    with caplog.at_level("WARNING"):
        drive(worker, lambda: bool(stuck_batches(worker)))
        assert sweep(worker) == 1
    [rec] = stuck_batches(worker)
    assert rec["pstatus"] == "finalizing" and rec["stuck"].startswith("finalizing")
    assert "stuck in 'finalizing'" in caplog.text
    drive(worker, all_final(producer, ids))
    assert not stuck_batches(worker)


def test_reseller_upload_fields_and_file_lifetime(redis_url):
    config = fast_emulator_config(
        required_upload_fields=["target_model_names"], max_file_expires_after_s=172_800
    )
    with start_emulator(config) as emu:
        profile = {
            "extra_upload_fields": {"target_model_names": "{model}"},
            "file_expires_after_s": 172_800,
        }
        settings = relay_settings(redis_url, emu, profile=profile, delete_provider_files=False)
        producer, worker = BatchRelay(settings), Relay(settings)
        ids = producer.submit_many([{"endpoint": CHAT, "body": chat(f"z{i}")} for i in range(3)])
        drive(worker, all_final(producer, ids))
        assert all(producer.status(i).state == "succeeded" for i in ids)
        import openai

        client = openai.OpenAI(base_url=emu.openai_base_url, api_key=emu.api_key)
        [batch] = client.batches.list().data
        source = client.files.retrieve(batch.input_file_id)
        assert source.expires_at - source.created_at == 172_800
        producer.close()
        worker.close()


def test_missing_reseller_field_refuses_the_batch_and_requests_fail_with_its_error(redis_url):
    config = fast_emulator_config(required_upload_fields=["target_model_names"])
    with start_emulator(config) as emu:
        settings = relay_settings(redis_url, emu, max_attempts=2, poll_interval_s=0.05)
        producer, worker = BatchRelay(settings), Relay(settings)
        rid = producer.submit(CHAT, chat("no field"))
        drive(worker, all_final(producer, [rid]))
        result = producer.result(rid)
        assert result["status"] == "failed" and result["attempts"] == 2
        assert result["error"]["code"] == "batch_refused"
        assert "target_model_names" in result["error"]["message"]
        producer.close()
        worker.close()


def test_a_batch_our_side_cannot_move_is_reported_stuck(stack, emu):
    from batchrelay.worker.sweep import stuck_batches

    producer, worker = stack(stuck_after_s=0.2)
    producer.submit(CHAT, chat("held"))
    time.sleep(0.25)
    [bid] = aggregate(worker)  # claimed, then nobody submits it (as if no profile had room)
    time.sleep(0.3)
    [rec] = stuck_batches(worker)
    assert rec["id"] == bid and rec["stuck"].startswith("claimed since")
    assert submit_batch(worker, bid) == "submitted"
    assert not stuck_batches(worker)


def test_a_wave_is_taken_and_settled_in_one_call_each(stack, receiver):
    """take_wave: a stale member is left alone, a delivered one leaves the schedule, the
    others are held and read; settle_deliveries: a record that expired meanwhile only
    leaves the schedule (no partial record is written back)."""
    from batchrelay.producer import commands
    from batchrelay.producer.records import RESULT_FIELDS

    producer, worker = stack()
    ids = producer.submit_many(
        [
            {"endpoint": CHAT, "body": chat(f"t{i}"), "callback": Webhook(receiver.url)}
            for i in range(4)
        ]
    )
    drive(worker, all_final(producer, ids), deliver=False)
    [chunk] = lease_due(worker)
    tag, k, r = chunk.tag, worker.keys, worker.redis
    stale, done, gone, live = sorted(ids)
    r.zadd(k.deliver(tag), {stale: chunk.leased_until_ms + 1})  # re-leased by a later tick
    r.hset(k.req(done), "dstate", "delivered")
    hold = worker.now() + 60_000
    call = commands.take_wave(
        k, tag, [stale, done, gone, live], RESULT_FIELDS, chunk.leased_until_ms, hold
    )
    replies = commands.run(r, call)
    assert replies[:2] == [commands.STALE, commands.SKIPPED]
    assert [dict(zip(RESULT_FIELDS, v, strict=True))["state"] for v in replies[2:]] == [
        b"succeeded"
    ] * 2
    assert r.zscore(k.deliver(tag), done) is None
    assert r.zscore(k.deliver(tag), gone) == r.zscore(k.deliver(tag), live) == hold

    r.delete(k.req(gone))  # expired after retention while its attempt ran
    rows = [
        commands.DeliveryOutcome(gone, "delivered", 1),
        commands.DeliveryOutcome(live, "retry", 1, due_ms=hold + 5, error="HTTP 500"),
    ]
    assert commands.run(r, commands.settle_deliveries(k, tag, worker.now(), rows)) == 1
    assert not r.exists(k.req(gone)) and r.zscore(k.deliver(tag), gone) is None
    assert r.zscore(k.deliver(tag), live) == hold + 5
    assert r.hmget(k.req(live), "dattempts", "dlast") == [b"1", b"HTTP 500"]
    with pytest.raises(ValueError, match="unknown delivery outcome"):
        commands.settle_deliveries(k, tag, 0, [commands.DeliveryOutcome(live, "lost", 1)])


def test_the_sweep_bills_what_a_killed_worker_left_unbilled(stack):
    """A worker killed between `settle` and `bill` leaves the group's bill waiting for a
    settle that an idle group never has: the sweep counts it."""
    from batchrelay.producer.admission import utc_date
    from batchrelay.worker.sweep import drain_bills

    producer, worker = stack()
    rid = producer.submit(CHAT, chat("billed"), tenant="shop")
    drive(worker, lambda: producer.status(rid).state == "succeeded", deliver=False)
    k, tag = worker.keys, tag_of(rid)
    costs = k.tenant_costs("shop", utc_date(worker.now()))
    counted = worker.redis.hgetall(costs)
    assert counted and not worker.redis.exists(k.bill(tag))
    # The state a kill right after `settle` leaves: billed nowhere yet, still open.
    worker.redis.delete(costs)
    worker.redis.zadd(k.tenant_open("shop"), {rid: worker.now()})
    worker.redis.zadd(k.bill(tag), {rid: worker.now()})
    assert drain_bills(worker) == 1
    assert worker.redis.hgetall(costs) == counted
    assert not worker.redis.exists(k.bill(tag)) and drain_bills(worker) == 0
