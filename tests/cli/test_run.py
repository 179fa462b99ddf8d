"""`batchrelay run FILE` end to end: CliRunner in the test's thread, the worker pipeline inline
in a background thread, real Redis and the emulator over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from batchrelay import BatchRelay
from batchrelay import run as run_module
from batchrelay.config.prices import DEFAULT_PRICES
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
    n = 10_000
    lines = [embedding_line(i) if i % 10 == 9 else chat_line(i) for i in range(n)]
    src = write_jsonl(tmp_path / "big.jsonl", lines)
    live.pipeline.start()
    result = live.run(str(src))
    assert result.exit_code == 0, result.output
    out = read_jsonl(tmp_path / "big.results.jsonl")
    check_outputs(out, n, embedding_every=10)
    assert live.records() == n and live.provider_lines() == n

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


def test_interrupted_submission_resumes_without_duplicates(
    live: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C after two of five chunks; the same command again submits only the rest."""
    n = 1_000
    src = write_jsonl(tmp_path / "part.jsonl", [chat_line(i, "gpt-unpriced") for i in range(n)])
    monkeypatch.setattr(run_module, "CHUNK", 200)
    calls = {"n": 0}
    real = BatchRelay.submit_many

    def interrupted(self: BatchRelay, items: list) -> list[str]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, items)

    monkeypatch.setattr(BatchRelay, "submit_many", interrupted)
    result = live.run(str(src), "-o", str(tmp_path / "out.jsonl"))
    assert result.exit_code == run_module.EXIT_INTERRUPTED, result.output
    assert "400 requests submitted so far" in result.output
    assert live.records() == 400
    monkeypatch.setattr(BatchRelay, "submit_many", real)

    live.pipeline.start()
    result = live.run(str(src), "-o", str(tmp_path / "out.jsonl"))
    assert result.exit_code == 0, result.output
    check_outputs(read_jsonl(tmp_path / "out.jsonl"), n)
    assert live.records() == n and live.provider_lines() == n
    assert "no price for gpt-unpriced: add it with BATCHRELAY_PRICES" in result.output


def test_no_wait_then_run_collects_without_resubmitting(
    live: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 500
    src = write_jsonl(tmp_path / "later.jsonl", [chat_line(i, "gpt-house-1") for i in range(n)])
    monkeypatch.setenv("BATCHRELAY_PRICES", '{"gpt-house-*": {"input": 1000, "output": 2000}}')
    result = live.run(str(src), "--no-wait")
    assert result.exit_code == 0, result.output
    assert "submitted 500 requests (500 new, 0 already in the relay)" in result.output
    assert live.records() == n
    assert not (tmp_path / "later.results.jsonl").exists()

    result = live.run(str(src), "--no-wait")
    assert "(0 new, 500 already in the relay)" in result.output
    live.pipeline.start()
    result = live.run(str(src))
    assert result.exit_code == 0, result.output
    out = read_jsonl(tmp_path / "later.results.jsonl")
    check_outputs(out, n)
    assert live.records() == n and live.provider_lines() == n
    usage = [o["response"]["body"]["usage"] for o in out]
    sync = (
        sum(u["prompt_tokens"] for u in usage) * 1000
        + sum(u["completion_tokens"] for u in usage) * 2000
    ) / 1e6
    row = next(r for r in result.output.splitlines() if r.strip().startswith("gpt-house-1"))
    assert row.split()[-2:] == [run_module.usd(sync / 2), run_module.usd(sync / 2)]
    assert f"Synchronous price {run_module.usd(sync)}" in result.output


def test_killed_process_resumes_without_duplicates(live: Live, tmp_path: Path) -> None:
    """SIGKILL a real `batchrelay run` once part of the file is in Redis (mid-submission or
    while it waits: the pipeline is not running yet), then run it again to the end."""
    n = 3_000
    src = write_jsonl(tmp_path / "killed.jsonl", [chat_line(i) for i in range(n)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrelay", "run", str(src)],
        cwd=ROOT,
        env=live.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: live.records() >= 1_000, 60, "the first chunk in Redis")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    before = live.records()
    assert 1_000 <= before <= n

    live.pipeline.start()
    started = time.monotonic()
    result = live.run(str(src))
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 60
    check_outputs(read_jsonl(tmp_path / "killed.results.jsonl"), n)
    assert live.records() == n and live.provider_lines() == n


def test_failed_requests_exit_1_and_are_in_the_output(live: Live, tmp_path: Path) -> None:
    live.emu.set_faults(request_error_fraction=0.2, request_error_status=400)
    n = 300
    src = write_jsonl(tmp_path / "faulty.jsonl", [chat_line(i) for i in range(n)])
    live.pipeline.start()
    result = live.run(str(src))
    assert result.exit_code == 1, result.output
    out = read_jsonl(tmp_path / "faulty.results.jsonl")
    assert [o["custom_id"] for o in out] == [f"req-{i}" for i in range(n)]
    failed = [o for o in out if o["status"] == "failed"]
    planned = sum(b.planned_failures for b in live.emu.engine.store.batches.values())
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
    assert live.records() == 0


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
    assert live.records() == 0


def test_anthropic_document_and_mixed_lines(live: Live, tmp_path: Path) -> None:
    """An Anthropic `{"requests": [...]}` document, and a JSONL file mixing Anthropic and
    OpenAI lines, through an anthropic-kind profile and an openai one."""
    live.pipeline.start()
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
    assert live.records() == 90


def claude_line(i: int) -> dict:
    return {
        "custom_id": f"req-{i}",
        "params": {
            "model": "claude-sonnet-4-5",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": f"question {i}"}],
        },
    }
