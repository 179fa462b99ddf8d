"""`batchrelay status`, `flush`, `batches`, `requests show` and `dead-letters` on a live relay."""

from __future__ import annotations

import orjson
import pytest
from typer.testing import CliRunner

from batchrelay import BatchRelay, Webhook
from batchrelay.cli import app
from batchrelay.emulator import start_emulator
from batchrelay.worker.context import Relay
from batchrelay.worker.sweep import stuck_batches
from tests._receiver import WebhookReceiver
from tests._stack import settings_env
from tests.relay.harness import CHAT, all_final, chat, drive, fast_emulator_config, relay_settings


@pytest.fixture
def live(redis_url, monkeypatch):
    with start_emulator(fast_emulator_config()) as emu, WebhookReceiver() as receiver:
        settings = relay_settings(redis_url, emu, stuck_after_s=0.3)
        for name, value in settings_env(settings).items():
            if name.startswith("BATCHRELAY_"):
                monkeypatch.setenv(name, value)
        producer, worker = BatchRelay(settings), Relay(settings)
        yield producer, worker, emu, receiver
        producer.close()
        worker.close()


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_status_flush_and_stuck_batches(live):
    producer, worker, emu, _ = live
    emu.set_faults(stuck_finalizing_next=1, stuck_finalizing_s=2.0)
    ids = producer.submit_many([{"endpoint": CHAT, "body": chat(f"q{i}")} for i in range(3)])
    view = orjson.loads(cli("status", "--json"))
    assert [g["pending"] for g in view["groups"]] == [3]
    assert "claimed 1 batch" in cli("flush")
    [batch] = orjson.loads(cli("batches", "list", "--json"))
    assert (batch["state"], batch["requests"]) == ("claimed", 3)
    drive(worker, lambda: bool(stuck_batches(worker)))
    view = orjson.loads(cli("status", "--json"))
    assert view["batches"][0]["stuck"].startswith("finalizing")
    assert "stuck batches: 1" in cli("status")
    shown = orjson.loads(cli("batches", "show", batch["id"]))
    assert shown["provider_status"] == "finalizing"
    drive(worker, all_final(producer, ids))
    shown = orjson.loads(cli("requests", "show", ids[0]))
    assert shown["result"]["status"] == "succeeded"


def test_dead_letters_list_and_replay(live):
    producer, worker, _, receiver = live
    receiver.down()
    rid = producer.submit(CHAT, chat("later"), callback=Webhook(receiver.url))
    drive(worker, lambda: producer.status(rid).delivery == "dead")
    [letter] = orjson.loads(cli("dead-letters", "list", "--json"))
    assert letter["id"] == rid and letter["last_error"]
    receiver.up()
    assert "replayed 1" in cli("dead-letters", "replay")
    drive(worker, lambda: receiver.wait_for(1, timeout=0.01))
    assert producer.status(rid).delivery == "delivered"
