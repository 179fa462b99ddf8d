"""`batchrelay batches cancel`, `status --watch` and `flush GROUP` on a live relay (real Redis,
the emulator over HTTP), plus their error paths."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest
from rich.console import Console
from typer.testing import CliRunner

from batchrelay import ops
from batchrelay.cli import app
from batchrelay.formatting import plural
from batchrelay.worker.context import SUBMITTED
from batchrelay.worker.submission import submit_batch
from tests._redis import RedisServer, free_port
from tests.relay.harness import CHAT, EMB, all_final, chat, drive
from tests.relay.test_cli_ops import cli, live  # noqa: F401  (live: fixture)

ROOT = Path(__file__).resolve().parents[2]


def cli_fails(*args: str) -> str:
    """Run the CLI, expect a non-zero exit and a message (not a bare traceback)."""
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code not in (0, None), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"uncaught {result.exception!r}; output: {result.output}"
    )
    return result.output


def provider_batch(emu, pbatch: str) -> dict:
    response = httpx.get(
        f"{emu.openai_base_url}/batches/{pbatch}",
        headers={"Authorization": f"Bearer {emu.api_key}"},
    )
    response.raise_for_status()
    return response.json()


# --- batches cancel ----------------------------------------------------------------------


def test_batches_cancel_cancels_at_the_provider_and_repools(live):  # noqa: F811
    producer, worker, emu, _ = live
    emu.set_timings(processing_rate_rps=0.2)  # 3 lines take 15 s: the batch is in progress
    ids = producer.submit_many([{"endpoint": CHAT, "body": chat(f"c{i}")} for i in range(3)])
    [bid] = [b for b in cli("flush").split() if b.startswith("b_")]
    drive(worker, lambda: worker.batch(bid).get("state") == SUBMITTED, timeout=10)
    pbatch = worker.batch(bid)["pbatch"]
    assert provider_batch(emu, pbatch)["status"] in ("validating", "in_progress")

    out = cli("batches", "cancel", bid)
    assert f"provider batch {pbatch}: cancelling" in out
    assert provider_batch(emu, pbatch)["status"] in ("cancelling", "cancelled")

    # The relay polls, sees `cancelled`, collects: the lines that never ran go back to pending.
    drive(worker, lambda: bool(worker.batch(bid).get("state") not in ("submitted", "collecting")))
    assert provider_batch(emu, pbatch)["status"] == "cancelled"
    for rid in ids:
        st = producer.status(rid)
        assert st.state == "pending", st
        assert st.attempt == 1, st
    view = orjson.loads(cli("status", "--json"))
    assert [g["pending"] for g in view["groups"]] == [3]
    assert not view["batches"]  # the cancelled batch is no longer live

    # Pending again means packed again: with a fast provider they now succeed.
    emu.set_timings(processing_rate_rps=50_000)
    drive(worker, all_final(producer, ids))
    for rid in ids:
        st = producer.status(rid)
        assert st.state == "succeeded" and st.batch_id != bid, st


def test_batches_cancel_refuses_a_batch_not_yet_at_the_provider(live):  # noqa: F811
    producer, worker, emu, _ = live
    rid = producer.submit(CHAT, chat("x"))
    [bid] = [b for b in cli("flush").split() if b.startswith("b_")]
    out = cli_fails("batches", "cancel", bid)
    assert bid in out and "no provider batch" in out and "claimed" in out
    assert worker.batch(bid)["state"] == "claimed"
    assert emu.stats()["batches_created"]["total"] == 0
    # Untouched: the claimed batch goes on as usual.
    drive(worker, all_final(producer, [rid]))
    assert producer.status(rid).state == "succeeded"


def test_batches_cancel_of_a_completed_batch_is_a_clear_error(live):  # noqa: F811
    producer, worker, emu, _ = live
    rid = producer.submit(CHAT, chat("x"))
    [bid] = [b for b in cli("flush").split() if b.startswith("b_")]
    drive(worker, all_final(producer, [rid]))
    pbatch = worker.batch(bid)["pbatch"]
    out = cli_fails("batches", "cancel", bid)
    assert bid in out and ("completed" in out or "collected" in out)
    assert provider_batch(emu, pbatch)["status"] == "completed"
    assert producer.status(rid).state == "succeeded"


@pytest.mark.parametrize("kind", ["well-formed", "malformed"])
def test_batches_cancel_unknown_id(live, kind):  # noqa: F811
    producer, _, _, _ = live
    rid = producer.submit(CHAT, chat("x"))
    tag = rid.split("_")[1]
    bid = f"b_{tag}_{'0' * 26}" if kind == "well-formed" else "not-a-batch"
    out = cli_fails("batches", "cancel", bid)
    assert f"no batch {bid}" in out  # as `batches show` says


# --- flush GROUP -------------------------------------------------------------------------


def test_flush_one_group_leaves_the_others_pending(live):  # noqa: F811
    producer, worker, _, _ = live
    chats = producer.submit_many([{"endpoint": CHAT, "body": chat(f"f{i}")} for i in range(3)])
    embs = producer.submit_many(
        [
            {"endpoint": EMB, "body": {"model": "text-embedding-3-small", "input": f"e{i}"}}
            for i in range(2)
        ]
    )
    groups = {g["endpoint"]: g for g in orjson.loads(cli("status", "--json"))["groups"]}
    chat_tag, emb_tag = groups[CHAT]["group"], groups[EMB]["group"]
    assert (groups[CHAT]["pending"], groups[EMB]["pending"]) == (3, 2)

    out = cli("flush", chat_tag)
    assert "claimed 1 batch" in out
    [batch] = orjson.loads(cli("batches", "list", "--json"))
    assert batch["id"] in out and batch["id"].split("_")[1] == chat_tag
    assert (batch["endpoint"], batch["state"], batch["requests"]) == (CHAT, "claimed", 3)
    groups = {g["endpoint"]: g for g in orjson.loads(cli("status", "--json"))["groups"]}
    assert (groups[CHAT]["pending"], groups[EMB]["pending"]) == (0, 2)
    assert {producer.status(r).state for r in chats} == {"in_batch"}
    assert {producer.status(r).state for r in embs} == {"pending"}

    # Flushing the same group again claims nothing; the other group is still untouched.
    assert "claimed 0 batch" in cli("flush", chat_tag)
    assert {producer.status(r).state for r in embs} == {"pending"}
    assert "claimed 1 batch" in cli("flush", emb_tag)
    assert {producer.status(r).state for r in embs} == {"in_batch"}


def test_flush_unknown_group_is_an_error(live):  # noqa: F811
    producer, _, _, _ = live
    rid = producer.submit(CHAT, chat("stay"))
    out = cli_fails("flush", "nosuchgroup1")
    assert "nosuchgroup1" in out
    assert producer.status(rid).state == "pending"


# --- status --watch ----------------------------------------------------------------------


class Watch:
    """`batchrelay status --watch N --json` as a subprocess; parses each refresh."""

    def __init__(self, interval: float, *extra: str):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "batchrelay", "status", "--watch", str(interval), *extra],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def views(self) -> list[dict]:
        views, chunk = [], []
        for line in list(self.lines):
            chunk.append(line)
            if line.rstrip("\n") == "}":
                views.append(orjson.loads("".join(chunk)))
                chunk = []
        return views

    def wait_for(self, predicate, timeout: float = 10.0) -> dict:
        """The first refresh printed from now on that matches."""
        start, deadline = len(self.views()), time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.stop()
            for view in self.views()[start:]:
                if predicate(view):
                    return view
            time.sleep(0.05)
        raise AssertionError(f"no refresh matched; last: {self.views()[-1:]}")

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(5)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        assert self.proc.stderr is not None
        return code, self.proc.stderr.read()


def test_status_watch_refreshes_as_work_progresses(live):  # noqa: F811
    producer, worker, _, _ = live
    watch = Watch(0.2, "--json")
    try:
        watch.wait_for(lambda v: v["groups"] == [] and v["batches"] == [])
        ids = producer.submit_many([{"endpoint": CHAT, "body": chat(f"w{i}")} for i in range(4)])
        watch.wait_for(lambda v: [g["pending"] for g in v["groups"]] == [4])
        cli("flush")
        seen = watch.wait_for(lambda v: [b["state"] for b in v["batches"]] == ["claimed"])
        assert seen["batches"][0]["requests"] == 4 and seen["groups"][0]["pending"] == 0
        drive(worker, all_final(producer, ids))
        done = watch.wait_for(
            lambda v: v["batches"] == [] and sum(g["pending"] for g in v["groups"]) == 0
        )
        assert done["deliveries_due"] == 0
        n = len(watch.views())
        time.sleep(0.5)  # still refreshing while nothing changes
        assert len(watch.views()) >= n + 1
    finally:
        code, err = watch.stop()
    # Ctrl-C ends the watch promptly, without a traceback.
    assert "Traceback" not in err, err
    assert code == 130, (code, err)


def test_status_watch_tables_refresh(live):  # noqa: F811
    producer, _, _, _ = live
    producer.submit(CHAT, chat("t"))
    watch = Watch(0.2)
    try:
        deadline = time.monotonic() + 10
        while "".join(watch.lines).count("Pending by group") < 3:
            assert time.monotonic() < deadline, "".join(watch.lines)
            assert watch.proc.poll() is None
            time.sleep(0.05)
        text = "".join(watch.lines)
        assert "Live batches" in text and "dead letters: 0" in text
    finally:
        code, err = watch.stop()
    assert "Traceback" not in err, err
    assert code == 130, (code, err)


# --- Redis unreachable or refusing: one line naming it, never a traceback ------------------

OPS_COMMANDS = [
    ["status"],
    ["batches", "list"],
    ["dead-letters", "list"],
    ["requests", "show", f"r_{'a' * 12}_{'0' * 26}"],
]


@pytest.fixture
def bare_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("BATCHRELAY_"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize("command", OPS_COMMANDS, ids=" ".join)
def test_ops_commands_with_redis_down_print_one_line(bare_env, command):
    port = free_port()  # nothing listens there
    bare_env.setenv("BATCHRELAY_REDIS_URL", f"redis://:pw-TOPSECRET@127.0.0.1:{port}/0")
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 69, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert f"cannot use Redis at redis://:***@127.0.0.1:{port}/0: ConnectionError" in lines[0]
    assert "pw-TOPSECRET" not in result.output


def test_ops_command_with_a_wrong_redis_password_says_so(bare_env, tmp_path):
    server = RedisServer(tmp_path, password="right-one")
    server.start()
    try:
        bare_env.setenv("BATCHRELAY_REDIS_URL", f"redis://:wrong-one@127.0.0.1:{server.port}/0")
        out = cli_fails("status")
    finally:
        server.stop()
    assert f"redis://:***@127.0.0.1:{server.port}/0" in out and "Error" in out, out
    assert "wrong-one" not in out and "Traceback" not in out


def test_status_names_the_redis_it_reads_and_whether_it_is_the_default(live, bare_env):  # noqa: F811
    # (`live` set BATCHRELAY_*; bare_env ran after it and cleared them: set the URL again.)
    producer, _, _, _ = live
    url = producer.settings.redis_url
    bare_env.setenv("BATCHRELAY_REDIS_URL", url.get_secret_value())
    assert cli("status").splitlines()[0] == f"Redis {url}"
    assert orjson.loads(cli("status", "--json"))["redis"] == str(url)
    # Unset, it is the default, and says so (rendered, not connected: 6379 is not ours).
    from batchrelay.config import load_settings

    bare_env.delenv("BATCHRELAY_REDIS_URL")
    assert ops._redis_named(load_settings()) == (
        "redis://127.0.0.1:6379/0 (default: BATCHRELAY_REDIS_URL is not set)"
    )


# --- 80 columns: ids and figures whole, on one line ------------------------------------------


def test_status_and_batches_list_fit_80_columns_with_whole_ids(live, monkeypatch):  # noqa: F811
    producer, worker, emu, _ = live
    monkeypatch.setattr(ops, "console", Console(width=80))
    emu.set_timings(processing_rate_rps=0.2)  # keeps the batch live while we look
    producer.submit_many(
        [
            {"endpoint": CHAT, "body": chat(f"w{i}", model="gpt-4o-mini-2024-07-18")}
            for i in range(3)
        ]
    )
    producer.submit_many(
        [
            {"endpoint": EMB, "body": {"model": "text-embedding-3-small", "input": f"e{i}"}}
            for i in range(1234)
        ]
    )
    groups = {g["endpoint"]: g for g in orjson.loads(cli("status", "--json"))["groups"]}
    [bid] = [b for b in cli("flush", groups[CHAT]["group"]).split() if b.startswith("b_")]
    # Only this batch moves on: a whole tick would also pack the embeddings group once its
    # flush wait is over (a loaded machine gets there), and it must stay pending here.
    submit_batch(worker, bid)
    assert worker.batch(bid).get("state") == SUBMITTED

    for args in (["status"], ["batches", "list"]):
        out = cli(*args)
        lines = out.splitlines()
        assert all(len(line) <= 80 for line in lines), out
        assert "…" not in out, out
        assert any(bid in line for line in lines), out  # whole, pasteable
        assert any("submitted" in line and bid in line for line in lines), out
    out = cli("status")
    emb = groups[EMB]
    rows = [line for line in out.splitlines() if emb["group"] in line]
    assert len(rows) == 1, out
    assert "text-embedding-3-small" in rows[0] and "1,234" in rows[0], out
    assert any("gpt-4o-mini-2024-07-18" in line for line in out.splitlines()), out


def test_batches_list_all_shows_recently_finished_batches(live):  # noqa: F811
    producer, worker, _, _ = live
    ids = producer.submit_many([{"endpoint": CHAT, "body": chat(f"d{i}")} for i in range(2)])
    [bid] = [b for b in cli("flush").split() if b.startswith("b_")]
    drive(worker, all_final(producer, ids))
    assert orjson.loads(cli("batches", "list", "--json")) == []  # nothing live any more
    [done] = orjson.loads(cli("batches", "list", "--all", "--json"))
    assert (done["id"], done["state"], done["provider_status"]) == (bid, "done", "completed")
    out = cli("batches", "list", "--all")
    assert "Recently finished batches" in out
    assert any(bid in line and "completed" in line for line in out.splitlines()), out


# --- small ones --------------------------------------------------------------------------------


def test_requests_show_unknown_prints_the_message_not_a_repr(live):  # noqa: F811
    producer, _, _, _ = live
    rid = producer.submit(CHAT, chat("x"))
    unknown = rid[:-5] + "zzzzz"
    out = cli_fails("requests", "show", unknown).strip()
    assert unknown in out and not out.startswith(("'", '"')), out


def test_counts_are_pluralised(live):  # noqa: F811
    producer, _, _, _ = live
    producer.submit(CHAT, chat("one"))
    assert "claimed 1 batch: b_" in cli("flush")
    assert "claimed 0 batches: -" in cli("flush")
    assert "replayed 0 deliveries" in cli("dead-letters", "replay")
    assert [plural(n, "request") for n in (0, 1, 1234)] == [
        "0 requests",
        "1 request",
        "1,234 requests",
    ]


@pytest.mark.parametrize("command", [[], ["status"], ["batches", "list"], ["run"], ["dev"]])
def test_help_shows_no_value_type_for_flags(command):
    out = CliRunner().invoke(app, [*command, "--help"]).output
    assert "--help" in out and "<bool>" not in out, out
