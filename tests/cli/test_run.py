"""`batchrelay run FILE` end to end in direct file mode: CliRunner in the test's thread (or a
real `batchrelay run` process), real Redis and the emulator over HTTP, no worker."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from batchrelay import run as run_module
from batchrelay.config.prices import DEFAULT_PRICES
from batchrelay.producer.keys import Keys
from batchrelay.worker.providers.openai_compat import OpenAIAdapter
from tests._stack import ROOT
from tests.cli.conftest import (
    Live,
    chat_line,
    embedding_line,
    read_jsonl,
    wait_for,
    write_jsonl,
)


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich lays tables out for 80 columns when output is not a terminal; widen it so the
    assertions can read whole cells."""
    monkeypatch.setenv("COLUMNS", "200")


def check_outputs(out: list[dict], n: int, embedding_every: int = 0) -> None:
    assert [o["custom_id"] for o in out] == [f"req-{i}" for i in range(n)]
    for i, o in enumerate(out):
        assert o["status"] == "succeeded" and o["error"] is None, o
        assert o["response"]["status_code"] == 200
        body = o["response"]["body"]
        if embedding_every and i % embedding_every == embedding_every - 1:
            assert body["object"] == "list" and len(body["data"][0]["embedding"]) == 8
        else:
            assert body["choices"][0]["message"]["content"] == f"echo: question {i}"


def test_ten_thousand_lines_complete_in_order_with_costs(live: Live, tmp_path: Path) -> None:
    """No worker runs: `run` sends one provider batch per (endpoint, model) itself and
    stores no request record."""
    n = 10_000
    lines = [embedding_line(i) if i % 10 == 9 else chat_line(i) for i in range(n)]
    src = write_jsonl(tmp_path / "big.jsonl", lines)
    result = live.run(str(src))
    assert result.exit_code == 0, result.output
    out = read_jsonl(tmp_path / "big.results.jsonl")
    check_outputs(out, n, embedding_every=10)
    assert sorted(b.endpoint for b in live.batches()) == ["/v1/chat/completions", "/v1/embeddings"]
    assert live.provider_lines() == n and live.records() == 0

    for text in ("submitted", "queued", "in a batch", "done", "failed", "10000/10000"):
        assert text in result.output
    chat = [o["response"]["body"]["usage"] for o in out if o["custom_id"][-1] != "9"]
    tokens_in = sum(u["prompt_tokens"] for u in chat)
    tokens_out = sum(u["completion_tokens"] for u in chat)
    price = DEFAULT_PRICES["gpt-4o-mini"]
    sync = price.sync_cost(tokens_in, tokens_out)
    row = next(r for r in result.output.splitlines() if r.strip().startswith("gpt-4o-mini"))
    assert row.split() == [  # no request failed, so no `failed` column
        "gpt-4o-mini",
        "9,000",
        run_module.count(tokens_in),
        run_module.count(tokens_out),
        run_module.usd(sync / 2),
        run_module.usd(sync / 2),
    ]
    assert any(r.strip().startswith("text-embedding-3-small") for r in result.output.splitlines())
    assert any(r.strip().startswith("total ") for r in result.output.splitlines())
    assert "10,000 succeeded, 0 failed" in result.output


def test_a_file_is_split_into_provider_legal_batches(
    live: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A profile allowing 300 requests per batch: 1,000 lines go as 300 + 300 + 300 + 100, and
    the output is still in input order."""
    providers = orjson.loads(os.environ["BATCHRELAY_PROVIDERS"])
    providers[0]["max_requests_per_batch"] = 300
    monkeypatch.setenv("BATCHRELAY_PROVIDERS", orjson.dumps(providers).decode())
    n = 1_000
    src = write_jsonl(tmp_path / "split.jsonl", [chat_line(i) for i in range(n)])
    result = live.run(str(src))
    assert result.exit_code == 0, result.output
    check_outputs(read_jsonl(tmp_path / "split.results.jsonl"), n)
    assert [b.total for b in live.batches()] == [300, 300, 300, 100]


def test_a_create_whose_reply_was_lost_is_adopted_after_ctrl_c(
    live: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C just after the provider created the second of three batches, before `run` saw
    the reply: the same command again finds that batch at the provider (promise 4) and
    creates only the third."""
    n = 900
    models = ("gpt-unpriced-a", "gpt-unpriced-b", "gpt-unpriced-c")
    src = write_jsonl(tmp_path / "part.jsonl", [chat_line(i, models[i % 3]) for i in range(n)])
    calls = {"n": 0}
    real = OpenAIAdapter.create

    def interrupted(self: OpenAIAdapter, **kwargs: object) -> object:
        made = real(self, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return made

    monkeypatch.setattr(OpenAIAdapter, "create", interrupted)
    result = live.run(str(src), "-o", str(tmp_path / "out.jsonl"))
    assert result.exit_code == run_module.EXIT_INTERRUPTED, result.output
    assert "300 requests submitted so far" in result.output
    assert len(live.batches()) == 2
    monkeypatch.setattr(OpenAIAdapter, "create", real)

    result = live.run(str(src), "-o", str(tmp_path / "out.jsonl"))
    assert result.exit_code == 0, result.output
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [o["custom_id"] for o in out] == [f"req-{i}" for i in range(n)]
    assert all(o["status"] == "succeeded" for o in out)
    assert len(live.batches()) == 3 and live.provider_lines() == n
    assert "no price for gpt-unpriced-a, gpt-unpriced-b, gpt-unpriced-c" in result.output


def test_no_wait_then_run_collects_without_resubmitting(
    live: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 500
    src = write_jsonl(tmp_path / "later.jsonl", [chat_line(i, "gpt-house-1") for i in range(n)])
    monkeypatch.setenv("BATCHRELAY_PRICES", '{"gpt-house-*": {"input": 1000, "output": 2000}}')
    result = live.run(str(src), "--no-wait")
    assert result.exit_code == 0, result.output
    assert "submitted 500 requests in 1 batch (1 created now, 0 already at the provider)" in (
        result.output
    )
    assert len(live.batches()) == 1
    assert not (tmp_path / "later.results.jsonl").exists()
    # The run's record lives for the result retention; its batches keep their profile slot
    # for the completion window (24 h), since they still run at the provider.
    keys = Keys(live.settings.key_prefix)
    fp = hashlib.sha256(src.read_bytes()).hexdigest()[:32]
    assert 0 < live.redis.ttl(keys.run(fp)) <= live.settings.result_retention_s
    assert 86_000 < live.redis.ttl(keys.run_alive(fp)) <= 86_400
    assert [b.decode() for b in live.redis.hkeys(keys.live("emu"))] == [
        f"run_{fp}_{b.decode()}" for b in live.redis.hkeys(keys.run(fp))
    ]

    result = live.run(str(src), "--no-wait")
    assert "(0 created now, 1 already at the provider)" in result.output
    result = live.run(str(src))
    assert result.exit_code == 0, result.output
    out = read_jsonl(tmp_path / "later.results.jsonl")
    check_outputs(out, n)
    assert len(live.batches()) == 1 and live.provider_lines() == n
    usage = [o["response"]["body"]["usage"] for o in out]
    sync = (
        sum(u["prompt_tokens"] for u in usage) * 1000
        + sum(u["completion_tokens"] for u in usage) * 2000
    ) / 1e6
    row = next(r for r in result.output.splitlines() if r.strip().startswith("gpt-house-1"))
    assert row.split()[-2:] == [run_module.usd(sync / 2), run_module.usd(sync / 2)]
    assert f"Synchronous price {run_module.usd(sync)}" in result.output


def start_run(live: Live, src: Path, out: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "batchrelay", "run", str(src), "-o", str(out)],
        cwd=ROOT,
        env={**live.env, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def test_killed_process_resumes_without_duplicates(live: Live, tmp_path: Path) -> None:
    """SIGKILL a real `batchrelay run` once the first of its batches is at the provider, then
    run it again to the end: every batch was created once. The killed run's locks last one
    `run_lease_s` (2 s here), so the second run waits at most that long for them."""
    live.emu.set_timings(validating_delay_s=2.0)
    n = 3_000
    models = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini")
    src = write_jsonl(tmp_path / "killed.jsonl", [chat_line(i, models[i % 3]) for i in range(n)])
    proc = start_run(live, src, tmp_path / "killed.results.jsonl", BATCHRELAY_RUN_LEASE_S="2")
    try:
        wait_for(lambda: len(live.batches()) >= 1, 60, "the first batch at the provider")
    finally:
        kill(proc)
    assert proc.returncode == -signal.SIGKILL
    assert 1 <= len(live.batches()) <= 3

    started = time.monotonic()
    result = live.run(str(src))
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 60
    out = read_jsonl(tmp_path / "killed.results.jsonl")
    assert [o["custom_id"] for o in out] == [f"req-{i}" for i in range(n)]
    assert all(o["status"] == "succeeded" for o in out)
    assert len(live.batches()) == 3 and live.provider_lines() == n


def test_two_runs_of_one_file_at_once_create_each_batch_once(live: Live, tmp_path: Path) -> None:
    live.emu.set_timings(validating_delay_s=1.0)
    n = 2_000
    models = ("gpt-4o-mini", "gpt-4o")
    src = write_jsonl(tmp_path / "twice.jsonl", [chat_line(i, models[i % 2]) for i in range(n)])
    procs = [start_run(live, src, tmp_path / f"out{k}.jsonl") for k in (1, 2)]
    try:
        for proc in procs:
            output = proc.communicate(timeout=120)[0].decode()
            assert proc.returncode == 0, output
    finally:
        for proc in procs:
            if proc.poll() is None:
                kill(proc)
    one, two = (read_jsonl(tmp_path / f"out{k}.jsonl") for k in (1, 2))
    assert one == two and [o["custom_id"] for o in one] == [f"req-{i}" for i in range(n)]
    assert all(o["status"] == "succeeded" for o in one)
    assert len(live.batches()) == 2 and live.provider_lines() == n


def test_lines_of_an_expired_batch_are_sent_again(live: Live, tmp_path: Path) -> None:
    """The provider expires the batch half-way: the unanswered half goes in a new batch."""
    live.emu.set_faults(expire_next=1, expire_after_fraction=0.5)
    n = 400
    src = write_jsonl(tmp_path / "expiring.jsonl", [chat_line(i) for i in range(n)])
    result = live.run(str(src))
    assert result.exit_code == 0, result.output
    check_outputs(read_jsonl(tmp_path / "expiring.results.jsonl"), n)
    first, again = live.batches()
    assert first.run_end_kind == "expired" and 0 < again.total < n
    assert first.total + again.total == live.provider_lines()
    assert "400 succeeded, 0 failed" in result.output


def test_lines_of_a_batch_that_failed_as_a_whole_are_sent_again(live: Live, tmp_path: Path) -> None:
    """The provider fails the first batch's validation for enqueued tokens (no line at fault):
    every line goes again in a second batch."""
    live.emu.set_faults(fail_validation_next=1, fail_validation_code="token_limit_exceeded")
    n = 100
    src = write_jsonl(tmp_path / "refused.jsonl", [chat_line(i) for i in range(n)])
    result = live.run(str(src))
    assert result.exit_code == 0, result.output
    check_outputs(read_jsonl(tmp_path / "refused.results.jsonl"), n)
    first, again = live.batches()
    assert first.failed_at is not None and again.failed_at is None and again.total == n


def test_lines_with_a_retryable_error_are_sent_again(live: Live, tmp_path: Path) -> None:
    """A 500 on a line is retryable: those lines go in a later batch until they succeed (the
    emulator fails a line by a hash of its batch and custom_id, so a new batch draws anew)."""
    live.emu.set_faults(request_error_fraction=0.1, request_error_status=500)
    n = 100
    src = write_jsonl(tmp_path / "flaky.jsonl", [chat_line(i) for i in range(n)])
    result = live.run(str(src))
    assert result.exit_code == 0, result.output
    check_outputs(read_jsonl(tmp_path / "flaky.results.jsonl"), n)
    first, *later = live.batches()
    assert first.total == n and later and sum(b.total for b in later) < n


def test_lines_are_sent_at_most_max_attempts_times(
    live: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every batch expires before its lines run: after MAX_ATTEMPTS batches they fail with
    the provider's reason, and `run` exits 1."""
    monkeypatch.setenv("BATCHRELAY_MAX_ATTEMPTS", "2")
    live.emu.set_faults(expire_next=5, expire_after_fraction=0.0)
    n = 50
    src = write_jsonl(tmp_path / "never.jsonl", [chat_line(i) for i in range(n)])
    result = live.run(str(src))
    assert result.exit_code == 1, result.output
    out = read_jsonl(tmp_path / "never.results.jsonl")
    assert [o["custom_id"] for o in out] == [f"req-{i}" for i in range(n)]
    assert {o["error"]["code"] for o in out} == {"batch_expired"}
    assert len(live.batches()) == 2 and live.provider_lines() == 2 * n


def test_failed_requests_exit_1_and_are_in_the_output(live: Live, tmp_path: Path) -> None:
    live.emu.set_faults(request_error_fraction=0.2, request_error_status=400)
    n = 300
    src = write_jsonl(tmp_path / "faulty.jsonl", [chat_line(i) for i in range(n)])
    result = live.run(str(src))
    assert result.exit_code == 1, result.output
    out = read_jsonl(tmp_path / "faulty.results.jsonl")
    assert [o["custom_id"] for o in out] == [f"req-{i}" for i in range(n)]
    failed = [o for o in out if o["status"] == "failed"]
    planned = sum(b.planned_failures for b in live.batches())
    assert 0 < len(failed) == planned < n
    for o in failed:
        assert o["response"] is None
        assert o["error"]["status_code"] == 400 and o["error"]["message"]
    for o in out:
        if o["status"] == "succeeded":
            assert o["response"]["body"]["choices"][0]["message"]["content"].startswith("echo: ")
    assert f"{n - len(failed)} succeeded, {len(failed)} failed" in result.output
    assert live.provider_lines() == n


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
            b"not json\n",
            "line 2: not valid JSON",
        ),
        (
            b'\n\n{"method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o"}}\n',
            "line 3: needs 'custom_id'",
        ),
        (
            b'{"custom_id": "a", "method": "GET", "url": "/v1/chat/completions", "body": {}}\n',
            "line 1: 'method' must be \"POST\"",
        ),
        (
            b'{"custom_id": "a", "params": {"model": "gpt-4o"}, "extra": 1}\n',
            "line 1: unknown field(s) ['extra']",
        ),
        (b'{"custom_id": "a", "prompt": "hi"}\n', "line 1: neither an OpenAI batch line"),
        (b"[1, 2]\n", "line 1: must be a JSON object, got list"),
    ],
    ids=["json", "custom_id", "method", "unknown-field", "neither", "not-object"],
)
def test_bad_lines_exit_2_naming_the_line(
    live: Live, tmp_path: Path, content: bytes, expected: str
) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_bytes(content)
    result = live.run(str(src))
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert live.keys() == [] and live.batches() == []


def test_bad_requests_are_all_listed_and_nothing_is_stored(live: Live, tmp_path: Path) -> None:
    """What submit() would refuse (routing, model, stream) and duplicate custom_ids, each with
    its line number, before a single line is stored."""
    lines = [chat_line(i) for i in range(5)]
    lines[1]["body"]["model"] = "mystery-1"
    lines[2]["body"]["stream"] = True
    lines[3]["custom_id"] = "req-0"
    del lines[4]["body"]["model"]
    src = write_jsonl(tmp_path / "bad.jsonl", [*lines, chat_line(5)])
    result = live.run(str(src))
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert "line 2: (custom_id 'req-1') model 'mystery-1' matches no provider" in output
    assert "line 3: (custom_id 'req-2') body has 'stream': true" in output
    assert "line 4: custom_id 'req-0' repeats line 1" in output
    assert "line 5: (custom_id 'req-4') body has no 'model'" in output
    assert live.keys() == [] and live.batches() == []


def test_anthropic_document_and_mixed_lines(live: Live, tmp_path: Path) -> None:
    """An Anthropic `{"requests": [...]}` document, and a JSONL file mixing Anthropic and
    OpenAI lines, through an anthropic-kind profile and an openai one."""
    doc = tmp_path / "claude.json"
    requests = {"requests": [claude_line(i) for i in range(50)]}
    doc.write_bytes(orjson.dumps(requests, option=orjson.OPT_INDENT_2))
    result = live.run(str(doc))
    assert result.exit_code == 0, result.output
    out = read_jsonl(tmp_path / "claude.results.jsonl")
    assert [o["custom_id"] for o in out] == [f"req-{i}" for i in range(50)]
    for i, o in enumerate(out):
        assert o["response"]["body"]["content"][0]["text"] == f"echo: question {i}", o
    row = next(r for r in result.output.splitlines() if r.strip().startswith("claude-"))
    assert row.split()[:2] == ["claude-sonnet-4-5", "50"]  # none failed: no `failed` column
    assert "$" in row and "50 succeeded, 0 failed" in result.output

    src = write_jsonl(
        tmp_path / "mixed.jsonl", [claude_line(i) if i % 2 else chat_line(i) for i in range(40)]
    )
    result = live.run(str(src))
    assert result.exit_code == 0, result.output
    for i, o in enumerate(read_jsonl(tmp_path / "mixed.results.jsonl")):
        body = o["response"]["body"]
        text = body["content"][0]["text"] if i % 2 else body["choices"][0]["message"]["content"]
        assert (o["custom_id"], text) == (f"req-{i}", f"echo: question {i}")
    assert live.provider_lines() == 90 and live.records() == 0
    assert sorted(b.shape for b in live.batches()) == ["anthropic", "anthropic", "openai"]


def claude_line(i: int) -> dict:
    return {
        "custom_id": f"req-{i}",
        "params": {
            "model": "claude-sonnet-4-5",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": f"question {i}"}],
        },
    }
