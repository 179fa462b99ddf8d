"""The enqueued-token budget is kept per profile and model: one glob budget ("gpt-4o*")
covers two models, and batches of one model filling its budget leave the other model's
budget whole. With a fallback behind the profile, only the model that ran out overflows to
it. Each profile is its own emulator, so the provider batches created there show where each
model's batches went."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from batchrelay.emulator import EmulatorHandle, start_emulator
from batchrelay.worker import capacity
from batchrelay.worker.packing import aggregate
from batchrelay.worker.submission import submit_batch
from tests.providers.helpers import chat_text
from tests.relay.harness import CHAT, chat, drive, fast_emulator_config

A, B = "gpt-4o-mini", "gpt-4o"
PER_BATCH = 5
# One token per request (bytes per token far above a request's size), so a budget of
# PER_BATCH tokens holds exactly one full batch per model.
ESTIMATE = {"gpt-4o*": 100_000.0}


@pytest.fixture
def emus() -> Iterator[dict[str, EmulatorHandle]]:
    started = {name: start_emulator(fast_emulator_config()) for name in ("shared", "backup")}
    yield started
    for emu in started.values():
        emu.stop()


def profile(emu: EmulatorHandle, name: str, **extra) -> dict:
    return {
        "name": name,
        "base_url": emu.openai_base_url,
        "api_key": emu.api_key,
        "models": ["gpt-*"],
        "max_requests_per_batch": PER_BATCH,
        **extra,
    }


@pytest.mark.parametrize(
    "budget", [{"gpt-4o*": PER_BATCH}, {A: PER_BATCH, B: PER_BATCH}], ids=["one-glob", "per-glob"]
)
def test_one_models_reservations_leave_another_models_budget_whole(relays, emus, budget):
    shared = profile(
        emus["shared"],
        "shared",
        enqueued_token_budget=budget,
        token_estimates=ESTIMATE,
        fallbacks=["backup"],
    )
    backup = profile(emus["backup"], "backup", token_estimates=ESTIMATE)
    producer, worker = relays(emus["shared"], [shared, backup])
    texts = {A: [f"a{i}" for i in range(2 * PER_BATCH)], B: [f"b{i}" for i in range(PER_BATCH)]}
    items = [(m, t) for m, ts in texts.items() for t in ts]
    ids = producer.submit_many([{"endpoint": CHAT, "body": chat(t, m)} for m, t in items])

    bids = aggregate(worker, now=worker.now() + 60_000)
    placed = Counter((worker.batch(b)["model"], worker.batch(b)["profile"]) for b in bids)
    # A filled its budget at `shared`, so its second batch overflowed; B's budget was untouched.
    assert placed == Counter({(A, "shared"): 1, (A, "backup"): 1, (B, "shared"): 1})
    totals = {m: int(worker.redis.hget(worker.keys.tokens("shared", m), "total")) for m in texts}
    assert totals == {A: PER_BATCH, B: PER_BATCH}  # together twice one model's budget
    settings = worker.settings.profile("shared")
    assert capacity.room(worker, settings, A) is None and capacity.room(worker, settings, B) is None

    assert [submit_batch(worker, bid) for bid in bids] == ["submitted"] * 3
    drive(worker, lambda: all(producer.status(i).final for i in ids))
    for rid, (model, text) in zip(ids, items, strict=True):
        result = producer.result(rid)
        assert result["status"] == "succeeded" and result["attempts"] == 1
        assert chat_text(result["response"]["body"]) == f"echo: {text}"
        assert result["response"]["body"]["model"] == model
    at = {
        name: Counter(b.model for b in emu.engine.store.list_batches("openai"))
        for name, emu in emus.items()
    }
    assert at == {"shared": Counter({A: 1, B: 1}), "backup": Counter({A: 1})}
    for model in texts:  # all given back once the batches ended
        assert int(worker.redis.hget(worker.keys.tokens("shared", model), "total") or 0) == 0
