"""`batchrelay dev` and `batchrelay demo` as a user runs them: real subprocesses, the printed
exports used as-is by a producer, and no process left behind after SIGTERM, SIGKILL or the end."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import psutil
import pytest

from batchrelay import BatchRelay, UnknownModelError, Webhook
from batchrelay.config import load_settings
from batchrelay.emulator import start_emulator
from batchrelay.stack import EmbeddedStack, StackError, emulator_profiles
from tests._receiver import WebhookReceiver
from tests._stack import ROOT

FAST_EMULATOR_ENV = {
    "BATCHRELAY_EMULATOR_VALIDATING_DELAY_S": "0.2",
    "BATCHRELAY_EMULATOR_PROCESSING_RATE_RPS": "2000",
    "BATCHRELAY_EMULATOR_FINALIZING_DELAY_S": "0.2",
    "BATCHRELAY_EMULATOR_EMBEDDING_DIM": "8",
}


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHRELAY_")}
    return {**env, **FAST_EMULATOR_ENV, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}


def start_dev(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    env_file, out = tmp_path / "dev.env", tmp_path / "dev.out"
    with out.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "batchrelay", "dev", "--env-file", str(env_file)],
            cwd=tmp_path,
            env=cli_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 90
    # The env file is written just before the banner with the logs line: wait for both.
    while not env_file.exists() or "  logs " not in out.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"dev did not get ready:\n{out.read_text()}")
        time.sleep(0.1)
    return proc, env_file, out


def exported(env_file: Path) -> dict[str, str]:
    values = {}
    for line in env_file.read_text().splitlines():
        word, assignment = shlex.split(line)
        assert word == "export"
        name, value = assignment.split("=", 1)
        values[name] = value
    return values


def docs_example_lines() -> list[str]:
    """The input lines of docs/cli.md's **Input.** example (an OpenAI, an Anthropic and a
    Mistral request), as the docs show them."""
    text = (ROOT / "docs" / "cli.md").read_text()
    return [line for line in text.splitlines() if line.startswith('{"custom_id": "q')]


def logdir_of(out: Path) -> Path:
    line = next(x for x in out.read_text().splitlines() if x.strip().startswith("logs"))
    return Path(line.split()[1])


def test_dev_serves_a_web_app_and_stops_everything_on_sigterm(tmp_path, monkeypatch):
    proc, env_file, out = start_dev(tmp_path)
    try:
        values = exported(env_file)
        assert "127.0.0.1:6379" not in values["BATCHRELAY_REDIS_URL"]
        assert values["BATCHRELAY_WEBHOOK_SECRETS"].startswith('["whsec_')
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 4, children  # redis, worker (+ its pool), beat

        with WebhookReceiver() as rx, BatchRelay(load_settings()) as relay:
            rid = relay.submit(
                "/v1/chat/completions",
                {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi dev"}]},
                callback=Webhook(rx.url + "/hook"),
            )
            result = relay.result(rid, timeout=60)
            assert result["status"] == "succeeded", result
            assert result["response"]["body"]["choices"][0]["message"]["content"] == "echo: hi dev"
            assert rx.wait_for(1, timeout=30)
            secret = load_settings().webhook_secrets[0].get_secret_value()
            assert rx.verify_all(secret) >= 1 and rx.by_id()[rid]
            with pytest.raises(UnknownModelError, match="'llama-3' matches no provider"):
                relay.submit("/v1/chat/completions", {"model": "llama-3", "messages": []})

        # The example lines of docs/cli.md (OpenAI, Anthropic, Mistral) through `batchrelay run`.
        lines = docs_example_lines()
        assert len(lines) == 3
        source = tmp_path / "docs-example.jsonl"
        source.write_text("\n".join(lines) + "\n")
        run = subprocess.run(
            [sys.executable, "-m", "batchrelay", "run", str(source)],
            cwd=tmp_path,
            env={**cli_env(), **values},
            capture_output=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stdout.decode() + run.stderr.decode()
        results = [orjson.loads(x) for x in (tmp_path / "docs-example.results.jsonl").open("rb")]
        assert [(r["custom_id"], r["status"]) for r in results] == [
            ("q1", "succeeded"),
            ("q2", "succeeded"),
            ("q3", "succeeded"),
        ]
        assert results[1]["response"]["body"]["content"][0]["text"] == "echo: Hi"

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    gone, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, f"left behind: {alive}"
    assert "stopped" in out.read_text()
    assert not logdir_of(out).exists(), "the temporary directory was not removed"


def test_dev_reports_a_dead_redis_and_keeps_the_logs(tmp_path):
    proc, _, out = start_dev(tmp_path)
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
        [redis] = [p for p in children if "redis-server" in p.name()]
        redis.kill()
        assert proc.wait(60) == 1, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    gone, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, f"left behind: {alive}"
    text = out.read_text()
    logdir = logdir_of(out)
    try:
        assert f"redis was killed by SIGKILL; its log: {logdir / 'redis.log'}" in text, text
        assert f"its logs are kept in {logdir}" in text, text
        assert {p.name for p in logdir.iterdir()} >= {"redis.log", "worker.log", "beat.log"}
        assert "Ready to accept connections" in (logdir / "redis.log").read_text()
    finally:
        shutil.rmtree(logdir.parent, ignore_errors=True)


def test_dev_profiles_follow_the_emulators_models():
    models = ["gpt-4o*", "claude-3*", "gemini-2.5-*", "o[0-9]*", "mistral-*", "codestral-*"]
    with start_emulator(port=0, models=models) as emu:
        profiles = emulator_profiles(emu)
    assert [(p["name"], p.get("kind", "openai"), p["models"]) for p in profiles] == [
        ("emulator", "openai", ["gpt-4o*", "o[0-9]*"]),
        ("emulator-anthropic", "anthropic", ["claude-3*"]),
        ("emulator-mistral", "mistral", ["mistral-*", "codestral-*"]),
        ("emulator-gemini", "gemini", ["gemini-2.5-*"]),
    ]
    assert profiles[1]["base_url"] == emu.anthropic_base_url
    assert profiles[2]["base_url"] == emu.mistral_base_url
    assert profiles[3]["base_url"] == emu.gemini_base_url


def test_dev_children_exit_when_dev_is_sigkilled(tmp_path):
    proc, _, out = start_dev(tmp_path)
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()  # no cleanup code runs: the kernel's parent-death signal must do it
    proc.wait(10)
    gone, alive = psutil.wait_procs(children, timeout=30)
    for p in alive:
        p.kill()
    shutil.rmtree(logdir_of(out).parent, ignore_errors=True)
    assert not alive, f"orphaned: {alive}"


def test_without_redis_server_the_stack_says_how_to_get_one(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    stack = EmbeddedStack(workdir=tmp_path)
    with pytest.raises(StackError, match=r"redis-server is not on PATH.*apt-get install"):
        stack.start()
    assert stack.emulator is None and not stack.procs


def test_demo_runs_the_example_file_and_cleans_up(tmp_path):
    results = tmp_path / "results.jsonl"
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrelay", "demo", "--output", str(results)],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        text = proc.communicate(timeout=120)[0].decode(errors="replace")
    finally:
        proc.kill()
    assert proc.returncode == 0, text
    assert time.monotonic() - started < 90, text
    assert len(results.read_text().splitlines()) == 120
    for heading in ("Usage and cost", "Sample results", "120 succeeded, 0 failed"):
        assert heading in text, text
    assert "every process it started has exited" in text
    redis_port = re.search(r"Redis redis://127\.0\.0\.1:(\d+)/", text).group(1)
    marks = (f"dev-{proc.pid}@", f"127.0.0.1:{redis_port}")
    leftovers = [
        p
        for p in psutil.process_iter(["cmdline"])
        if any(m in part for part in (p.info["cmdline"] or []) for m in marks)
    ]
    assert not leftovers, leftovers
