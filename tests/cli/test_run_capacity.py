"""`batchrelay run` shares a profile's batches-in-flight cap with the relay's own traffic, and a
killed run does not keep its share: real Redis, the emulator, the relay's pipeline inline."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import orjson
import pytest

from batchrelay import BatchRelay
from batchrelay.config import Settings, load_settings
from batchrelay.producer.keys import Keys
from batchrelay.worker.context import Relay
from batchrelay.worker.sweep import release_stale
from tests.cli.conftest import Live, Pipeline, chat_line, read_jsonl, wait_for, write_jsonl
from tests.cli.test_run import kill, start_run

CHAT = "/v1/chat/completions"


def one_slot(monkeypatch: pytest.MonkeyPatch, live: Live) -> Settings:
    """The `emu` profile with max_batches_in_flight = 1, for `run` and the relay alike."""
    providers = orjson.loads(os.environ["BATCHRELAY_PROVIDERS"])
    providers[0]["max_batches_in_flight"] = 1
    monkeypatch.setenv("BATCHRELAY_PROVIDERS", orjson.dumps(providers).decode())
    live.env["BATCHRELAY_PROVIDERS"] = os.environ["BATCHRELAY_PROVIDERS"]
    return load_settings()


def owner(batch: object) -> str:
    return (getattr(batch, "metadata", None) or {}).get("batchrelay_batch", "")


def test_run_waits_for_a_relay_batch_holding_the_only_slot(
    live: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = one_slot(monkeypatch, live)
    live.emu.set_timings(validating_delay_s=2.0)
    pipeline = Pipeline(settings)
    try:
        with BatchRelay(settings) as producer:
            rid = producer.submit(CHAT, chat_line(0)["body"])
        pipeline.start()
        wait_for(lambda: len(live.batches()) == 1, 30, "the relay's batch at the provider")
        n = 200
        src = write_jsonl(tmp_path / "capped.jsonl", [chat_line(i) for i in range(n)])
        result = live.run(str(src))
        assert result.exit_code == 0, result.output
    finally:
        pipeline.stop()
        pipeline.relay.close()
    assert len(read_jsonl(tmp_path / "capped.results.jsonl")) == n
    relay_batch, run_batch = live.batches()
    assert owner(relay_batch).startswith("b_") and owner(run_batch).startswith("run_")
    assert relay_batch.terminal_at is not None
    assert run_batch.created_at >= relay_batch.terminal_at  # it waited for the slot
    with BatchRelay(settings) as producer:
        assert producer.status(rid).state == "succeeded"
    assert live.redis.hlen(Keys(settings.key_prefix).live("emu")) == 0


@pytest.mark.parametrize("by", ["sweep", "next run"])
def test_a_killed_run_gives_its_slot_back_after_its_lease(
    live: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, by: str
) -> None:
    """SIGKILL a run whose batch holds the only slot: the reservation outlives the process
    by one `run_lease_s` (1 s here), then the worker's sweep, or the next `run` of another
    file (which gets the slot), gives it back."""
    settings = one_slot(monkeypatch, live)
    live.emu.set_timings(validating_delay_s=60.0)
    live_key = Keys(settings.key_prefix).live("emu")
    src = write_jsonl(tmp_path / "killed.jsonl", [chat_line(i) for i in range(50)])
    proc = start_run(live, src, tmp_path / "out.jsonl", BATCHRELAY_RUN_LEASE_S="1")
    try:
        wait_for(lambda: len(live.batches()) == 1, 60, "the run's batch at the provider")
    finally:
        kill(proc)
    assert proc.returncode == -signal.SIGKILL
    held = [b.decode() for b in live.redis.hkeys(live_key)]
    assert len(held) == 1 and held[0].startswith("run_")
    relay = Relay(settings)
    try:
        assert release_stale(relay) == 0  # the run's lease has not run out yet
        time.sleep(1.5)
        if by == "sweep":
            assert release_stale(relay) == 1
            assert live.redis.hlen(live_key) == 0
            return
    finally:
        relay.close()
    live.emu.set_timings(validating_delay_s=0.0)
    other = write_jsonl(tmp_path / "other.jsonl", [chat_line(i, "gpt-4o") for i in range(20)])
    result = live.run(str(other))
    assert result.exit_code == 0, result.output
    assert len(live.batches()) == 2 and live.redis.hlen(live_key) == 0
