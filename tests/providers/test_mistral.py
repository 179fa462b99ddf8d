"""Mistral batch jobs through the relay (`kind = "mistral"`), against the emulator's Mistral
routes: inline and file jobs, errored requests (final and retried), a TIMEOUT_EXCEEDED job
and a cancelled one re-pooled, a lost create reply adopted rather than paid twice, and API
faults with cut downloads losing and doubling nothing."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import orjson
import pytest

from batchrelay.config import ConfigurationError, load_settings
from batchrelay.emulator import EmulatorHandle, start_emulator
from batchrelay.worker.packing import aggregate
from batchrelay.worker.providers import ProviderError
from batchrelay.worker.providers.mistral import parse_result_line
from batchrelay.worker.submission import submit_batch
from tests.providers.helpers import Scenario, chat_text
from tests.providers.test_faults_by_kind import CUTS, FAULTS
from tests.relay.harness import CHAT, chat, drive, fast_emulator_config

MODEL = "mistral-small-latest"
# A request that never ran has no result line at Mistral; the relay names why it has none.
EXPIRED, CANCELLED = "batch_expired", "batch_cancelled"


def profile(emu: EmulatorHandle, **extra: Any) -> dict[str, Any]:
    return {
        "name": "mistral",
        "kind": "mistral",
        "base_url": emu.mistral_base_url,
        "api_key": emu.api_key,
        "models": ["mistral-*"],
        **extra,
    }


def scenario(relays, receiver, emu: EmulatorHandle, n: int = 30, **extra: Any) -> Scenario:
    producer, worker = relays(emu, [profile(emu, **extra.pop("profile", {}))], **extra)
    return Scenario(
        producer,
        worker,
        emu,
        receiver,
        endpoint=CHAT,
        body=lambda text: chat(text, MODEL),
        reply=chat_text,
        n=n,
    )


def jobs(emu: EmulatorHandle) -> list[Any]:
    return [b for b in emu.engine.store.list_batches("openai") if b.flavor == "mistral"]


@pytest.fixture
def emu():
    with start_emulator(fast_emulator_config(auth_headers=["bearer"])) as handle:
        yield handle


@pytest.mark.parametrize("inline_max_bytes", [None, 0], ids=["inline", "input-file"])
def test_jobs_deliver_and_errored_requests_fail_or_retry(relays, receiver, emu, inline_max_bytes):
    extra = {} if inline_max_bytes is None else {"inline_max_bytes": inline_max_bytes}
    run = scenario(relays, receiver, emu, profile=extra, delete_provider_files=False)
    got = run.deliver(run.submit("plain"))
    assert all(p["status"] == "succeeded" and p["attempts"] == 1 for p in got.values())
    run.errored(final_status=400, final_code="invalid_request_error", retry_status=503)

    made = jobs(emu)
    assert made and all(b.metadata and b.metadata["batchrelay_batch"] for b in made)
    assert all(b.model == MODEL and b.completion_window == "24h" for b in made)
    if inline_max_bytes is None:
        assert all(b.inline and not b.input_files for b in made)
    else:
        assert all(len(b.input_files) == 1 and not b.inline for b in made)
        uploads = [f for f in emu.engine.store.list_files() if f.purpose == "batch"]
        assert len(uploads) == len(made)


def test_a_timed_out_job_and_a_cancelled_one_are_re_pooled(relays, receiver, emu):
    run = scenario(relays, receiver, emu)
    emu.set_faults(expire_next=1, expire_after_fraction=0.5)
    assert run.succeeded_after(run.submit("timeout"), EXPIRED) >= run.n // 3
    emu.reset_faults()
    assert [j.run_end_kind for j in jobs(emu)][-1] == "expired"  # TIMEOUT_EXCEEDED

    emu.set_timings(processing_rate_rps=5)
    sent = run.submit("cancelled")
    [bid] = aggregate(run.worker, now=run.worker.now() + 60_000)
    assert submit_batch(run.worker, bid) == "submitted"
    emu.reset(data=False)
    time.sleep(0.3)
    rec = run.worker.batch(bid)
    assert run.worker.adapter("mistral").cancel(rec["pbatch"]).status == "cancelling"
    assert run.succeeded_after(sent, CANCELLED) > 0
    assert run.worker.batch(bid)["pstatus"] == "cancelled"


def test_a_lost_create_reply_is_adopted_not_paid_twice(relays, receiver, emu):
    run = scenario(relays, receiver, emu, n=10)
    emu.set_faults(lost_reply_next=1, lost_reply_match="POST */batch/jobs")
    sent = run.submit("lost")
    drive(run.worker, lambda: set(sent) <= receiver.ok_ids(), swallow=(ProviderError,))
    assert emu.stats()["replies_lost"] == 1
    got = run.deliver(sent)
    assert all(p["status"] == "succeeded" and p["attempts"] == 1 for p in got.values())
    assert emu.stats()["batches_created"]["mistral"] == 1
    [job] = jobs(emu)
    assert {run.producer.status(rid).batch_id for rid in sent} == {job.metadata["batchrelay_batch"]}


def test_api_errors_and_cut_downloads_lose_and_double_nothing(relays, receiver, emu):
    n = 40
    run = scenario(
        relays,
        receiver,
        emu,
        n=n,
        profile={"max_requests_per_batch": 5},
        delete_provider_files=False,
        lease_s=1.2,
        http_timeout_s=1,
    )
    emu.set_faults(**FAULTS)
    sent = run.submit("faults")
    drive(run.worker, lambda: set(sent) <= receiver.ok_ids(), swallow=(ProviderError,), timeout=40)
    stats = emu.stats()
    emu.reset_faults()
    assert stats["http_faults_injected"] >= 3 and stats["downloads_cut"] == CUTS, stats

    got = run.deliver(sent)
    assert all(p["status"] == "succeeded" and p["attempts"] == 1 for p in got.values())
    assert Counter(len(d) for d in receiver.by_id().values()) == Counter({1: n})
    made = jobs(emu)
    assert sum(j.total for j in made) == n
    assert len(made) == stats["batches_created"]["mistral"] >= n // 5
    owners = {
        k.decode(): v.decode()
        for k, v in run.worker.redis.hgetall(run.worker.keys.pbatches("mistral")).items()
    }
    assert owners == {j.id: j.metadata["batchrelay_batch"] for j in made}


def test_profile_defaults_and_checks():
    base = {"name": "m", "kind": "mistral", "api_key": "k"}
    [m] = load_settings(providers=[{**base, "base_url": "https://api.mistral.ai"}]).providers
    assert m.inline_max_bytes == 1024 * 1024 and m.auth_style == "bearer"
    assert (m.max_requests_per_batch, m.max_bytes_per_batch) == (1_000_000, 512 * 1024 * 1024)
    assert m.endpoints == [CHAT, "/v1/embeddings", "/v1/fim/completions", "/v1/moderations"]
    with pytest.raises(ConfigurationError, match="give the API root"):
        load_settings(providers=[{**base, "base_url": "https://api.mistral.ai/v1"}])
    with pytest.raises(ConfigurationError, match="does not apply to kind 'mistral'"):
        load_settings(
            providers=[{**base, "base_url": "https://x.example", "file_expires_after_s": 90_000}]
        )


def test_result_lines_without_a_status_code():
    """Mistral does not promise `status_code`: a response counts as a success unless the
    line carries an error (a string error is its message)."""
    ok = parse_result_line(orjson.dumps({"custom_id": "a", "response": {"body": {"x": 1}}}))
    assert ok is not None and (ok.kind, ok.status_code, ok.payload) == ("ok", 200, b'{"x":1}')
    line = {"custom_id": "b", "response": {"body": {"message": "boom"}}, "error": "boom"}
    failed = parse_result_line(orjson.dumps(line))
    assert failed is not None and (failed.kind, failed.status_code) == ("retry", 500)
    refused = parse_result_line(orjson.dumps({"custom_id": "c", "error": "bad request"}))
    assert refused is not None and refused.kind == "fail"
    assert orjson.loads(refused.payload)["message"] == "bad request"
