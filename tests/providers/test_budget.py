"""An enqueued-token budget shared by every worker: three groups (three endpoints of one
model at one profile) compete for it from three worker threads. No batch is refused for
tokens, the reservations never exceed the budget, and neither do the tokens the provider
(the emulator, counting its own way) has enqueued at any moment. The same load without
the relay's budget gets batches refused, which shows the contest is real."""

from __future__ import annotations

import threading
import time
from typing import Any

from batchrelay import BatchRelay
from batchrelay.emulator import start_emulator
from batchrelay.worker.context import Relay
from tests.providers.helpers import settings_for
from tests.relay.harness import CHAT, fast_emulator_config, tick

MODEL = "gpt-4o-mini"
BUDGET = 2_500
PER_GROUP = 60
ENDPOINTS = {
    CHAT: lambda text: {"model": MODEL, "messages": [{"role": "user", "content": text}]},
    "/v1/responses": lambda text: {"model": MODEL, "input": text},
    "/v1/completions": lambda text: {"model": MODEL, "prompt": text},
}


def provider_peak(emu: Any) -> tuple[int, int, int]:
    """(peak enqueued tokens, batches, batches refused for tokens) as the emulator saw them:
    tokens of batches in progress, over time."""
    events, refused, batches = [], 0, 0
    for b in emu.engine.store.list_batches("openai"):
        batches += 1
        if b.failed_at is not None:
            refused += any(e.get("code") == "token_limit_exceeded" for e in b.errors or [])
            continue
        if b.in_progress_at is not None:
            events += [(b.in_progress_at, b.enqueued_tokens), (b.run_end_at, -b.enqueued_tokens)]
    peak = level = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        level += delta
        peak = max(peak, level)
    return peak, batches, refused


def run_load(redis_url: str, relay_budget: bool) -> dict[str, Any]:
    config = fast_emulator_config(
        processing_rate_rps=300, faults={"token_budget_per_model": {MODEL: BUDGET}}
    )
    with start_emulator(config) as emu:
        profile = {
            "name": "emu",
            "base_url": emu.openai_base_url,
            "api_key": emu.api_key,
            "max_requests_per_batch": 15,
            **({"enqueued_token_budget": {MODEL: BUDGET}} if relay_budget else {}),
        }
        settings = settings_for(redis_url, emu, [profile], max_attempts=20)
        producer = BatchRelay(settings)
        workers = [Relay(settings) for _ in range(3)]
        prompt = "tell me about the number {} " + "and its neighbours " * 8
        ids = producer.submit_many(
            {"endpoint": endpoint, "body": body(prompt.format(i))}
            for endpoint, body in ENDPOINTS.items()
            for i in range(PER_GROUP)
        )
        stop, failures, sampled = threading.Event(), [], [0]
        budget_key = workers[0].keys.tokens("emu", MODEL)

        def work(relay: Relay) -> None:
            while not stop.is_set():
                try:
                    tick(relay)
                except Exception as exc:  # reported by the test below
                    failures.append(exc)
                    return
                time.sleep(0.01)

        def watch() -> None:
            while not stop.is_set():
                sampled[0] = max(sampled[0], int(workers[0].redis.hget(budget_key, "total") or 0))

        threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in workers]
        threads.append(threading.Thread(target=watch, daemon=True))
        start = time.monotonic()
        for t in threads:
            t.start()
        deadline = start + 60
        while time.monotonic() < deadline and not failures:
            if all(producer.status(i).final for i in ids):
                break
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(10)
        elapsed = time.monotonic() - start
        assert not failures, failures
        results = [producer.status(i) for i in ids]
        assert all(r.state == "succeeded" for r in results), "not every request succeeded"
        peak, batches, refused = provider_peak(emu)
        producer.close()
        for w in workers:
            w.close()
    return {
        "requests": len(ids),
        "batches": batches,
        "refused_for_tokens": refused,
        "peak_reserved": sampled[0],
        "peak_enqueued_at_provider": peak,
        "seconds": round(elapsed, 1),
    }


def test_three_groups_share_one_budget_and_no_batch_is_refused(redis_url):
    shared = run_load(redis_url, relay_budget=True)
    print(f"\nbudget {BUDGET} tokens, 3 groups x {PER_GROUP} requests, 3 workers:")
    print(f"  with the relay's budget:    {shared}")
    assert shared["refused_for_tokens"] == 0
    assert 0 < shared["peak_reserved"] <= BUDGET
    assert shared["peak_enqueued_at_provider"] <= BUDGET
    assert shared["peak_reserved"] > BUDGET // 2  # the budget was really contended
    unshared = run_load(redis_url, relay_budget=False)
    print(f"  without it (control):       {unshared}")
    assert unshared["refused_for_tokens"] > 0
