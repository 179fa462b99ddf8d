"""The CLI and the sweep with the state on a Redis Cluster: `batchrelay run`, `status`,
`flush`, `batches list --all` (scans every master), `requests show`, `dead-letters`."""

from __future__ import annotations

import orjson
from redis.cluster import RedisCluster
from typer.testing import CliRunner

from batchrelay import BatchRelay, Webhook
from batchrelay.cli import app
from batchrelay.emulator import start_emulator
from batchrelay.worker.context import Relay
from batchrelay.worker.sweep import retire_idle_groups, sweep
from tests._receiver import WebhookReceiver
from tests._stack import settings_env
from tests.cli.conftest import Pipeline, chat_line, read_jsonl, write_jsonl
from tests.cli.test_run import check_outputs
from tests.relay.harness import CHAT, all_final, chat, drive, fast_emulator_config, relay_settings
from tests.relay.test_cli_ops import cli

MODELS = [f"gpt-4o-mini-{i}" for i in range(6)]


def test_cli_and_sweep_on_a_cluster(cluster_url, monkeypatch):
    with start_emulator(fast_emulator_config()) as emu, WebhookReceiver() as receiver:
        settings = relay_settings(cluster_url, emu, flush_max_wait_s=600)
        for name, value in settings_env(settings).items():
            if name.startswith("BATCHRELAY_"):
                monkeypatch.setenv(name, value)
        producer, worker = BatchRelay(settings), Relay(settings)
        try:
            assert isinstance(worker.redis, RedisCluster)
            items = [{"endpoint": CHAT, "body": chat(f"q{i}", MODELS[i % 6])} for i in range(30)]
            ids = producer.submit_many(items)
            view = orjson.loads(cli("status", "--json"))
            assert sorted(g["model"] for g in view["groups"]) == MODELS
            assert "claimed 6 batches" in cli("flush")
            drive(worker, all_final(producer, ids))
            finished = orjson.loads(cli("batches", "list", "--all", "--json"))
            assert sorted(b["model"] for b in finished) == MODELS
            shown = orjson.loads(cli("requests", "show", ids[0]))
            assert shown["result"]["status"] == "succeeded"
            receiver.down()
            rid = producer.submit(CHAT, chat("later"), callback=Webhook(receiver.url))
            monkeypatch.setenv("BATCHRELAY_FLUSH_MAX_WAIT_S", "0.2")
            assert "claimed 1 batch" in cli("flush")
            drive(worker, lambda: producer.status(rid).delivery == "dead")
            [letter] = orjson.loads(cli("dead-letters", "list", "--json"))
            assert letter["id"] == rid
            receiver.up()
            assert "replayed 1" in cli("dead-letters", "replay")
            drive(worker, lambda: receiver.wait_for(1, timeout=0.01))
            # The sweep (reservations, registry, idle groups) runs on the cluster; nothing is
            # idle yet: every group still has unexpired records.
            assert sweep(worker) == 0
            assert retire_idle_groups(worker) == []
        finally:
            producer.close()
            worker.close()


def test_batchrelay_run_on_a_cluster(cluster_url, monkeypatch, tmp_path):
    """`batchrelay run` with BATCHRELAY_REDIS_URL naming a cluster node: submits, waits on
    sharded pub/sub and writes every result in order (the pipeline runs inline beside it)."""
    with start_emulator(fast_emulator_config()) as emu:
        settings = relay_settings(cluster_url, emu)
        for name, value in settings_env(settings).items():
            if name.startswith("BATCHRELAY_"):
                monkeypatch.setenv(name, value)
        monkeypatch.delenv("BATCHRELAY_CONFIG_FILE", raising=False)
        lines = [chat_line(i, MODELS[i % 6]) for i in range(600)]
        src = write_jsonl(tmp_path / "in.jsonl", lines)
        pipeline = Pipeline(settings)
        pipeline.start()
        try:
            result = CliRunner().invoke(app, ["run", str(src)])
        finally:
            pipeline.stop()
            pipeline.relay.close()
        assert result.exit_code == 0, result.output
        check_outputs(read_jsonl(tmp_path / "in.results.jsonl"), 600)
