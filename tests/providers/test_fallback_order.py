"""An ordered fallback list: `primary` falls back to `first`, then `second`. Each profile is
its own emulator, so the provider batches each one created show where batches went. The
first fallback takes everything it can, whatever the order profiles are configured in; when
it is full (max_batches_in_flight) or disabled, batches go to the second."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from batchrelay.emulator import EmulatorHandle, start_emulator
from batchrelay.worker.packing import aggregate
from batchrelay.worker.submission import submit_batch
from tests.providers.helpers import chat_text
from tests.relay.harness import CHAT, chat, drive, fast_emulator_config

NAMES = ("primary", "first", "second")
N, PER_BATCH = 20, 5


@pytest.fixture
def emus() -> Iterator[dict[str, EmulatorHandle]]:
    started = {name: start_emulator(fast_emulator_config()) for name in NAMES}
    yield started
    for emu in started.values():
        emu.stop()


def run(relays, emus, **extra: dict) -> Counter[str]:
    """Route N requests of one group through primary -> [first, second], the profiles
    configured in the order primary, second, first (models pick primary; its list alone
    orders the rest). Returns where each batch was placed when claimed, after checking every
    request came back from there with its own answer."""

    def profile(name: str) -> dict:
        return {
            "name": name,
            "base_url": emus[name].openai_base_url,
            "api_key": emus[name].api_key,
            "models": ["gpt-*"],
            "max_requests_per_batch": PER_BATCH,
            **({"fallbacks": ["first", "second"]} if name == "primary" else {}),
            **extra.get(name, {}),
        }

    producer, worker = relays(emus["primary"], [profile(n) for n in ("primary", "second", "first")])
    texts = [f"order {i}" for i in range(N)]
    ids = producer.submit_many([{"endpoint": CHAT, "body": chat(t)} for t in texts])
    bids = aggregate(worker, now=worker.now() + 60_000)
    placed = Counter(worker.batch(bid)["profile"] for bid in bids)
    assert [submit_batch(worker, bid) for bid in bids] == ["submitted"] * len(bids)
    drive(worker, lambda: all(producer.status(i).final for i in ids))
    for rid, text in zip(ids, texts, strict=True):
        result = producer.result(rid)
        assert result["status"] == "succeeded" and result["attempts"] == 1
        assert chat_text(result["response"]["body"]) == f"echo: {text}"
        assert result["provider"] == worker.batch(producer.status(rid).batch_id)["profile"]
    created = {name: emus[name].stats()["batches_created"]["total"] for name in NAMES}
    assert created == {name: placed[name] for name in NAMES}  # placed there, created there
    served = Counter(producer.result(i)["provider"] for i in ids)
    assert sum(served.values()) == N and set(served) == set(+placed)
    return placed


def test_the_first_fallback_is_preferred_over_the_second(relays, emus):
    placed = run(relays, emus, primary={"enabled": False})
    assert placed == Counter(first=N // PER_BATCH)


def test_a_full_first_fallback_passes_batches_to_the_second(relays, emus):
    caps = {"primary": {"max_batches_in_flight": 1}, "first": {"max_batches_in_flight": 1}}
    placed = run(relays, emus, **caps)
    assert placed == Counter(primary=1, first=1, second=N // PER_BATCH - 2)


def test_a_disabled_first_fallback_passes_batches_to_the_second(relays, emus):
    placed = run(relays, emus, primary={"enabled": False}, first={"enabled": False})
    assert placed == Counter(second=N // PER_BATCH)
