"""Splitting one group into several Anthropic message batches: an `anthropic` profile whose
max_requests_per_batch or max_bytes_per_batch is lowered makes a group several batches, each
within the emulator's own (equally lowered) max_anthropic_requests / max_anthropic_body_bytes,
all accepted and collected. Without the profile's limits the same load is refused by the
emulator, which shows its limits are real."""

from __future__ import annotations

import contextlib
import io
import math

import pytest

from batchrelay.emulator import start_emulator
from batchrelay.worker.packing import aggregate, write_input
from batchrelay.worker.submission import submit_batch
from tests._emulator import anthropic_client
from tests.providers.helpers import message_text, messages
from tests.providers.test_anthropic import MESSAGES, VERSION, native
from tests.relay.harness import drive, fast_emulator_config

N = 40
MAX_REQUESTS = 6
MAX_BODY = 2_500
# Each limit lowered alone: the emulator's for the provider, the profile's for the relay.
LIMITS = {
    "requests": (
        {"max_anthropic_requests": MAX_REQUESTS},
        {"max_requests_per_batch": MAX_REQUESTS},
    ),
    "bytes": (
        {"max_anthropic_body_bytes": MAX_BODY},
        {"max_bytes_per_batch": MAX_BODY, "max_line_bytes": 1_000},
    ),
}


def text(i: int) -> str:
    """Prompts of uneven sizes, so byte limits cut batches at uneven counts."""
    return f"split {i} " + "abcdefg" * (i * 7 % 23)


def listed_batches(emu) -> list:
    headers = {"x-api-key": emu.api_key, "anthropic-version": VERSION}
    with contextlib.closing(anthropic_client(emu, default_headers=headers)) as client:
        return client.messages.batches.list(limit=100).data


@pytest.mark.parametrize("limit", list(LIMITS))
def test_a_group_too_big_for_one_message_batch_goes_as_several(relays, limit):
    emu_limits, profile_limits = LIMITS[limit]
    config = fast_emulator_config(anthropic_versions=[VERSION], **emu_limits)
    with start_emulator(config) as emu:
        producer, worker = relays(
            emu, [native(emu, **profile_limits)], delete_provider_files=False, max_attempts=1
        )
        ids = producer.submit_many(
            [{"endpoint": MESSAGES, "body": messages(text(i))} for i in range(N)]
        )
        bids = aggregate(worker, now=worker.now() + 60_000)  # one group, claimed at once
        assert len({producer.status(i).batch_id for i in ids}) == len(bids) > 1
        adapter = worker.adapter("claude")
        sizes = []
        for bid in bids:  # the exact create body each batch is about to send
            out = io.BytesIO()
            sizes.append((write_input(worker, adapter, bid, MESSAGES, out), len(out.getvalue())))
        if limit == "requests":
            assert len(bids) == math.ceil(N / MAX_REQUESTS)
            assert max(n for n, _ in sizes) == MAX_REQUESTS
        else:
            assert max(size for _, size in sizes) <= MAX_BODY
            assert max(n for n, _ in sizes) < N // 2  # bytes, not the count, cut them
        print(f"\n{limit}: {len(bids)} batches of (requests, body bytes) {sizes}")

        assert [submit_batch(worker, bid) for bid in bids] == ["submitted"] * len(bids)
        drive(worker, lambda: all(producer.status(i).final for i in ids))
        for i, rid in enumerate(ids):
            result = producer.result(rid)
            assert result["status"] == "succeeded" and result["attempts"] == 1, result
            assert message_text(result["response"]["body"]) == f"echo: {text(i)}"

        batches = listed_batches(emu)
        assert len(batches) == emu.stats()["batches_created"]["anthropic"] == len(bids)
        assert sorted(b.request_counts.succeeded for b in batches) == sorted(n for n, _ in sizes)
        assert all(
            b.processing_status == "ended" and b.request_counts.errored == 0 for b in batches
        )


@pytest.mark.parametrize(("limit", "status"), [("requests", 400), ("bytes", 413)])
def test_without_the_profiles_limits_the_emulator_refuses_the_batch(relays, limit, status):
    emu_limits, _ = LIMITS[limit]
    with start_emulator(fast_emulator_config(**emu_limits)) as emu:
        producer, worker = relays(emu, [native(emu)], max_attempts=1)
        ids = producer.submit_many(
            [{"endpoint": MESSAGES, "body": messages(text(i))} for i in range(N)]
        )
        [bid] = aggregate(worker, now=worker.now() + 60_000)
        assert submit_batch(worker, bid) == "refused"
        drive(worker, lambda: all(producer.status(i).final for i in ids))
        errors = [producer.result(i)["error"] for i in ids]
        assert {(e["code"], e["status_code"]) for e in errors} == {("batch_refused", status)}
        assert emu.stats()["batches_created"]["anthropic"] == 0
