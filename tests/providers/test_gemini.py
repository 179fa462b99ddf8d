"""Gemini Batch Mode end to end with an inline worker: inline and file batches, every kind of
result (final and retried errors, expiry, cancel), faults, cut downloads, and reconciling a
create whose answer was lost (adopted by its displayName, not created twice)."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from batchrelay.emulator import start_emulator
from batchrelay.worker.packing import aggregate
from batchrelay.worker.providers import ProviderError
from batchrelay.worker.submission import create, submit_batch
from tests.providers.helpers import Scenario
from tests.relay.harness import drive, fast_emulator_config

GENERATE = "/v1beta/models/gemini-2.5-flash:generateContent"


def profile(emu, **extra):
    return {
        "name": "gemini",
        "kind": "gemini",
        "base_url": emu.base_url,
        "api_key": emu.api_key,
        "models": ["gemini-*"],
        **extra,
    }


def contents(text: str) -> dict:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}]}


def reply_text(body: dict) -> str:
    return body["candidates"][0]["content"]["parts"][0]["text"]


@pytest.fixture
def emu():
    with start_emulator(fast_emulator_config()) as emu:
        yield emu


class GeminiScenario(Scenario):
    """Requests go to their model's path; results name the method as their endpoint (the
    model is in `model`)."""

    def __init__(self, *args, path: str, **kwargs):
        method = path.rpartition(":")[2]
        super().__init__(*args, endpoint=method, body=contents, reply=reply_text, **kwargs)
        self.path = path

    def submit(self, tag: str) -> dict[str, str]:
        texts = [f"{tag} {i}" for i in range(self.n)]
        items = [
            {"endpoint": self.path, "body": self.body(t), "callback": self.hook} for t in texts
        ]
        return dict(zip(self.producer.submit_many(items), texts, strict=True))


def scenario(producer, worker, emu, receiver, path=GENERATE):
    return GeminiScenario(producer, worker, emu, receiver, path=path)


def created(emu) -> int:
    return emu.stats()["batches_created"]["gemini"]


def listed(emu) -> list[dict]:
    headers = {"x-goog-api-key": emu.api_key}
    return httpx.get(emu.base_url + "/v1beta/batches", headers=headers).json()["operations"]


def test_inline_batches_every_result_kind_and_usage(relays, emu, receiver):
    producer, worker = relays(emu, [profile(emu)])
    run = scenario(producer, worker, emu, receiver)
    got = run.deliver(run.submit("plain"))
    for payload in got.values():
        assert payload["status"] == "succeeded" and payload["model"] == "gemini-2.5-flash"
        assert payload["endpoint"] == "generateContent"
        usage = payload["usage"]
        assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    run.errored(final_status=400, final_code="INVALID_ARGUMENT", retry_status=503)
    run.expired()
    run.cancelled()
    assert listed(emu) == []  # every collected batch was deleted at the provider


def test_v1_paths(relays, emu, receiver):
    """`api_version = "v1"` speaks /v1/ (google-genai's default since 3.0), and requests may
    be submitted to /v1/ paths; both versions' requests share one group."""
    producer, worker = relays(emu, [profile(emu, api_version="v1")])
    run = scenario(producer, worker, emu, receiver, GENERATE.replace("v1beta", "v1"))
    run.n = 5
    emu.set_faults(http_error_rate=1.0, http_error_match="* /v1beta/*")  # v1beta is off limits
    got = run.deliver(run.submit("v1"))
    assert all(p["status"] == "succeeded" for p in got.values())
    assert created(emu) == 1


def test_file_batches_survive_faults_and_cut_downloads(relays, emu, receiver):
    producer, worker = relays(
        emu,
        [profile(emu, max_requests_per_batch=10)],
        lease_s=1.2,  # a cut-off collection is taken up again one lease later
        http_timeout_s=1,
    )
    worker.adapter("gemini").inline_limit = 1_000  # every batch goes as an uploaded file
    run = scenario(producer, worker, emu, receiver)
    emu.set_faults(
        download_cut_fraction=0.5,
        download_cut_next=2,
        http_error_rate=0.3,
        http_error_statuses=[429, 500, 503],
        retry_after_s=0.05,
    )
    sent = run.submit("file")
    drive(worker, lambda: set(sent) <= receiver.ok_ids(), swallow=(ProviderError,), timeout=40)
    stats = emu.stats()
    emu.reset_faults()
    assert stats["downloads_cut"] == 2 and stats["http_faults_injected"] >= 3, stats
    assert stats["files_uploaded"] == stats["batches_created"]["gemini"] >= 3
    got = run.deliver(sent)
    assert all(p["status"] == "succeeded" and p["attempts"] == 1 for p in got.values())
    assert Counter(len(d) for d in receiver.by_id().values()) == Counter({1: run.n})

    # Without faults (a failed cleanup call is not retried), collected batches leave nothing
    # behind: their input and responses files and the batches are deleted.
    def left() -> set[str]:
        return set(emu.engine.store.files) | {op["name"] for op in listed(emu)}

    before = left()
    run.expired()
    assert left() == before


def test_embeddings(relays, emu, receiver):
    producer, worker = relays(emu, [profile(emu)])
    rid = producer.submit(
        "/v1/models/gemini-embedding-001:embedContent", {"content": {"parts": [{"text": "x"}]}}
    )
    drive(worker, lambda: producer.status(rid).final)
    result = producer.result(rid)
    assert len(result["response"]["body"]["embedding"]["values"]) == 8


def test_a_lost_create_reply_is_adopted_by_display_name(relays, emu, receiver):
    """The create took effect but its answer was lost (a gateway timeout): the next attempt
    lists batches, finds the one whose displayName is our batch id and adopts it."""
    producer, worker = relays(emu, [profile(emu)])
    ids = producer.submit_many(
        [{"endpoint": GENERATE, "body": contents(f"c{i}")} for i in range(5)]
    )
    [bid] = aggregate(worker, now=worker.now() + 10_000)
    emu.set_faults(lost_reply_next=1, lost_reply_match="POST /v1beta/models/*")
    assert submit_batch(worker, bid) == "submitted"
    assert emu.stats()["replies_lost"] == 1 and created(emu) == 1
    [op] = listed(emu)
    assert op["metadata"]["displayName"] == bid and worker.batch(bid)["pbatch"] == op["name"]
    drive(worker, lambda: all(producer.status(i).final for i in ids))
    texts = [reply_text(producer.result(i)["response"]["body"]) for i in ids]
    assert texts == [f"echo: c{i}" for i in range(5)]
    assert created(emu) == 1


def test_a_create_lost_before_a_crash_is_adopted_not_repeated(relays, emu):
    """The worker died after the create and before recording it: the next submit finds the
    batch by its displayName instead of paying for a second one."""

    producer, worker = relays(emu, [profile(emu)])
    ids = producer.submit_many(
        [{"endpoint": GENERATE, "body": contents(f"d{i}")} for i in range(3)]
    )
    [bid] = aggregate(worker, now=worker.now() + 10_000)
    create(worker, worker.adapter("gemini"), worker.batch(bid))  # ...and the worker dies here
    assert submit_batch(worker, bid) == "adopted"
    drive(worker, lambda: all(producer.status(i).final for i in ids))
    assert created(emu) == 1
