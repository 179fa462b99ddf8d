"""Routing between profiles: model globs pick the profile; a disabled profile, one at its
batches-in-flight cap or one out of tokens passes batches to its fallbacks, in order; the
batch record says where each batch went, and polling and collection follow it there."""

from __future__ import annotations

import threading
import time

import pytest

from batchrelay.emulator import start_emulator
from batchrelay.producer import errors
from batchrelay.producer.intake import Router
from batchrelay.worker import capacity
from batchrelay.worker.context import CLAIMED, DONE
from batchrelay.worker.sweep import release_stale, sweep
from tests.relay.harness import CHAT, chat, drive, fast_emulator_config


@pytest.fixture
def emu():
    with start_emulator(fast_emulator_config()) as server:
        yield server


def profile(emu, name, **extra):
    return {
        "name": name,
        "base_url": emu.openai_base_url,
        "api_key": emu.api_key,
        "models": ["gpt-*"],
        **extra,
    }


def batch_profiles(producer, worker, ids) -> set[str]:
    return {worker.batch(producer.status(i).batch_id)["profile"] for i in ids}


def test_a_disabled_profile_sends_its_requests_to_its_fallback(relays, emu):
    producer, worker = relays(
        emu,
        [
            profile(emu, "primary", enabled=False, fallbacks=["backup"]),
            profile(emu, "next-in-line"),  # would take them if primary had no fallback
            profile(emu, "backup"),
        ],
    )
    ids = producer.submit_many([{"endpoint": CHAT, "body": chat(f"d{i}")} for i in range(10)])
    assert {producer.status(i).profile for i in ids} == {"primary"}  # the group's profile
    drive(worker, lambda: all(producer.status(i).final for i in ids))
    assert all(producer.result(i)["status"] == "succeeded" for i in ids)
    assert batch_profiles(producer, worker, ids) == {"backup"}
    # Once final, the request and its payload name the profile that served it.
    assert {producer.status(i).profile for i in ids} == {"backup"}
    assert {producer.result(i)["provider"] for i in ids} == {"backup"}


def test_router_skips_a_disabled_profile_without_a_usable_fallback(emu, relays):
    producer, _ = relays(
        emu,
        [
            profile(emu, "off", enabled=False),
            profile(emu, "off-with-dead-fallback", enabled=False, fallbacks=["off"]),
            profile(emu, "on", models=["gpt-4o*"]),
        ],
    )
    router = Router(producer.settings)
    assert router.route(CHAT, "gpt-4o-mini").name == "on"
    with pytest.raises(errors.UnknownModelError):
        router.route(CHAT, "gpt-3.5-turbo")


def test_batches_in_flight_cap_overflows_to_the_fallback_and_is_never_exceeded(relays, emu):
    caps = {"primary": 1, "backup": 2}
    producer, worker = relays(
        emu,
        [
            profile(
                emu,
                "primary",
                max_batches_in_flight=1,
                fallbacks=["backup"],
                max_requests_per_batch=10,
            ),
            profile(emu, "backup", max_batches_in_flight=2, max_requests_per_batch=10),
        ],
    )
    emu.set_timings(processing_rate_rps=40)
    peak = {name: 0 for name in caps}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for name in caps:
                peak[name] = max(peak[name], worker.redis.hlen(worker.keys.live(name)))
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    models = ["gpt-4o-mini", "gpt-4.1-nano", "gpt-4o", "gpt-4.1"]
    ids = producer.submit_many(
        [{"endpoint": CHAT, "body": chat(f"c{i}", models[i % 4])} for i in range(120)]
    )
    try:
        drive(worker, lambda: all(producer.status(i).final for i in ids), timeout=60)
    finally:
        stop.set()
        watcher.join()
    assert all(producer.result(i)["status"] == "succeeded" for i in ids)
    assert peak["primary"] == 1 and 1 <= peak["backup"] <= 2, peak
    assert batch_profiles(producer, worker, ids) == {"primary", "backup"}
    for name in caps:
        assert worker.redis.hlen(worker.keys.live(name)) == 0  # all given back


def test_an_exhausted_token_budget_overflows_to_the_fallback(relays, emu):
    producer, worker = relays(
        emu,
        [
            profile(
                emu,
                "primary",
                enqueued_token_budget={"gpt-4o*": 400},
                fallbacks=["backup"],
                max_requests_per_batch=5,
            ),
            profile(emu, "backup", max_requests_per_batch=5),
        ],
    )
    emu.set_timings(processing_rate_rps=20)
    ids = producer.submit_many([{"endpoint": CHAT, "body": chat(f"b{i}")} for i in range(40)])
    drive(worker, lambda: all(producer.status(i).final for i in ids), timeout=60)
    assert all(producer.result(i)["status"] == "succeeded" for i in ids)
    went = batch_profiles(producer, worker, ids)
    assert went == {"primary", "backup"}
    key = worker.keys.tokens("primary", "gpt-4o-mini")
    assert int(worker.redis.hget(key, "total") or 0) == 0


def test_the_sweep_gives_back_what_killed_processes_left_reserved(relays, emu):
    producer, worker = relays(emu, [profile(emu, "a", fallbacks=["b"]), profile(emu, "b")])
    settings = producer.settings
    a, b = settings.profile("a"), settings.profile("b")
    producer.submit(CHAT, chat("x"))
    from batchrelay.worker.packing import aggregate

    [live] = aggregate(worker, now=worker.now() + 10_000)  # claimed for a, reserved there
    assert capacity.reserved(worker, "a") == {live: "gpt-4o-mini"}
    done, moved = "b_" + live[2:15] + "0" * 26, live
    worker.set_batch(done, state=DONE, profile="a", model="gpt-4o-mini")
    capacity.reserve(worker, a, done, "gpt-4o-mini", 50)  # finished, but never released
    capacity.reserve(worker, b, "b_" + live[2:15] + "1" * 26, "gpt-4o-mini", 5)  # record gone
    assert release_stale(worker) == 2
    assert capacity.reserved(worker, "a") == {live: "gpt-4o-mini"}
    assert capacity.reserved(worker, "b") == {}
    # A claimed batch placed at b while a still holds its reservation: a's is stale.
    capacity.reserve(worker, b, moved, "gpt-4o-mini", 5)
    worker.set_batch(moved, profile="b")
    assert worker.batch(moved)["state"] == CLAIMED
    sweep(worker)
    assert capacity.reserved(worker, "a") == {} and capacity.reserved(worker, "b") == {
        moved: "gpt-4o-mini"
    }
