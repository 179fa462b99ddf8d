"""Starting and stopping: in-process handles, settings from the environment, the CLI, restarts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from batchrelay.emulator import EmulatorConfig, start_emulator
from tests._emulator import anthropic_client, fast_config, openai_client
from tests.emulator.helpers import (
    create_batch,
    message_request,
    read_jsonl,
    request_line,
    upload,
    wait_batch,
    wait_message_batch,
)

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_starts_fast_on_a_free_port_and_stops_cleanly():
    start = time.monotonic()
    emu = start_emulator(fast_config())
    elapsed = time.monotonic() - start
    assert elapsed < 1.0
    assert emu.port > 0 and emu.base_url == f"http://127.0.0.1:{emu.port}"
    assert emu.openai_base_url == emu.base_url + "/v1"
    assert httpx.get(emu.base_url + "/_emulator/health").status_code == 200
    root = emu.engine.store.root
    start = time.monotonic()
    emu.stop()
    assert time.monotonic() - start < 2.0
    assert not root.exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(emu.base_url + "/_emulator/health")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", emu.port))
    emu.stop()


def test_start_emulator_defaults_and_overrides():
    with start_emulator(api_keys=["sk-a", "sk-b"], validating_delay_s=0) as emu:
        assert emu.api_key == "sk-a" and emu.config.port == 0
        for key in ("sk-a", "sk-b"):
            response = httpx.get(
                emu.openai_base_url + "/files", headers={"Authorization": f"Bearer {key}"}
            )
            assert response.status_code == 200
    with start_emulator(fast_config(), embedding_dim=3) as emu:
        assert emu.config.embedding_dim == 3 and emu.config.validating_delay_s == 0


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("BATCHRELAY_EMULATOR_PORT", "9999")
    monkeypatch.setenv("BATCHRELAY_EMULATOR_API_KEYS", '["sk-env"]')
    monkeypatch.setenv("BATCHRELAY_EMULATOR_PROCESSING_RATE_RPS", "123")
    monkeypatch.setenv("BATCHRELAY_EMULATOR_ANTHROPIC_BATCHES_PATH", "/v1/batches")
    monkeypatch.setenv("BATCHRELAY_EMULATOR_FAULTS__HTTP_ERROR_RATE", "0.25")
    config = EmulatorConfig()
    assert (config.port, config.api_keys, config.processing_rate_rps) == (9999, ["sk-env"], 123)
    assert config.anthropic_batches_path == "/v1/batches"
    assert config.faults.http_error_rate == 0.25
    assert config.completion_window_s == 86400


def test_timings_change_at_run_time(emulator):
    emulator.set_timings(processing_rate_rps=7)
    current = httpx.get(
        emulator.base_url + "/_emulator/timings",
        headers={"Authorization": f"Bearer {emulator.api_key}"},
    ).json()
    assert current == {
        "validating_delay_s": 0.0,
        "processing_rate_rps": 7.0,
        "finalizing_delay_s": 0.0,
        "completion_window_s": 86400.0,
    }
    with pytest.raises(httpx.HTTPStatusError):
        emulator.set_timings(processing_rate_rps=0)
    emulator.reset()
    assert emulator.engine.timings.processing_rate_rps == 5000


def test_stats_count_batches_per_shape(emulator, emulator_openai, emulator_anthropic):
    create_batch(emulator_openai, [request_line(0)])
    emulator_anthropic.messages.batches.create(requests=[message_request(0)])
    emulator_anthropic.messages.batches.create(requests=[message_request(0)])
    stats = emulator.stats()
    assert stats["batches_created"] == {
        "openai": 1,
        "azure": 0,
        "anthropic": 2,
        "mistral": 0,
        "groq": 0,
        "together": 0,
        "gemini": 0,
        "total": 3,
    }
    assert stats["files_uploaded"] == 1
    emulator.reset(data=False)
    stats = emulator.stats()
    assert stats["batches_created"]["total"] == 0 and stats["files_stored"] >= 1


def test_state_survives_a_restart(tmp_path):
    config = fast_config(data_dir=tmp_path / "data")
    with start_emulator(config) as emu:
        client = openai_client(emu)
        done = wait_batch(client, create_batch(client, [request_line(i) for i in range(5)]).id)
        emu.set_timings(processing_rate_rps=20)
        running = create_batch(client, [request_line(i) for i in range(30)], metadata={"k": "v"})
        wait_batch(client, running.id, {"in_progress"})
        anthropic = anthropic_client(emu)
        message_batch = anthropic.messages.batches.create(requests=[message_request(0)])
        wait_message_batch(anthropic, message_batch.id)
        output = read_jsonl(client, done.output_file_id)
    with start_emulator(config) as emu:
        client = openai_client(emu)
        again = client.batches.retrieve(done.id)
        assert again == done
        assert read_jsonl(client, done.output_file_id) == output
        resumed = wait_batch(client, running.id)
        assert resumed.status == "completed" and resumed.metadata == {"k": "v"}
        assert resumed.request_counts.completed == 30
        anthropic = anthropic_client(emu)
        results = list(anthropic.messages.batches.results(message_batch.id))
        assert results[0].custom_id == "req-0"
        newer = upload(client, [request_line(0)])
        assert [f.id for f in client.files.list(order="desc")][0] == newer.id


def _wait_up(base_url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            if httpx.get(base_url + "/_emulator/health").status_code == 200:
                return
        except httpx.ConnectError:
            time.sleep(0.05)
    raise AssertionError("CLI emulator did not start")


def test_cli_runs_the_emulator_with_a_data_dir(tmp_path):
    port = _free_port()
    env = {**os.environ, "BATCHRELAY_EMULATOR_API_KEYS": '["sk-cli"]', "PYTHONPATH": str(ROOT)}
    args = [
        sys.executable,
        "-m",
        "batchrelay",
        "emulator",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path),
    ]
    base_url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": "Bearer sk-cli"}
    for attempt in range(2):
        proc = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            _wait_up(base_url, proc)
            if attempt == 0:
                files = {"file": ("a.jsonl", b'{"x": 1}\n', "application/jsonl")}
                response = httpx.post(
                    base_url + "/v1/files", data={"purpose": "batch"}, files=files, headers=headers
                )
                assert response.status_code == 200
            else:
                listed = httpx.get(base_url + "/v1/files", headers=headers).json()
                assert [f["filename"] for f in listed["data"]] == ["a.jsonl"]
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(15) in (0, 130, -signal.SIGINT)
    assert b"batchrelay emulator on http://127.0.0.1" in proc.stdout.read()
