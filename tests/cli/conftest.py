"""A live relay for `batchrelay run`: real Redis, the emulator in-process, and the worker
pipeline run inline by `tick` in a background thread (no Celery), as `beat` + a worker would.
`run` itself needs no worker; the pipeline carries the relay's own traffic where a test has
some (capacity shared with the relay)."""

from __future__ import annotations

import _thread
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from typer.testing import CliRunner, Result

from batchrelay.cli import app
from batchrelay.config import Settings
from batchrelay.emulator import EmulatorHandle, start_emulator
from batchrelay.worker.context import Relay
from tests._stack import settings_env
from tests.relay.harness import fast_emulator_config, relay_settings, tick


class PipelineFailed(Exception):
    """Raised in the main thread when the background pipeline died."""


class Pipeline:
    """`tick` in a loop on its own thread. The tests inject no fault a worker should retry,
    so an exception is a bug: it is kept for `stop()` to raise, the loop ends, and the main
    thread gets PipelineFailed (by SIGUSR1), so a `run` waiting for results ends at once
    instead of hanging until the test times out."""

    def __init__(self, settings: Settings):
        self.relay = Relay(settings)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[BaseException] = []

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="pipeline", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                tick(self.relay)
            except Exception as exc:
                self.errors.append(exc)
                _thread.interrupt_main(signal.SIGUSR1)
                return
            self._stop.wait(0.05)

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(30)
            self._thread = None
        if self.errors:
            raise self.errors[0]


@dataclass
class Live:
    settings: Settings
    env: dict[str, str]
    emu: EmulatorHandle
    pipeline: Pipeline
    redis: redis.Redis

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(app, ["run", *args])

    def records(self) -> int:
        """Request records in Redis (direct file mode stores none)."""
        pattern = f"{self.settings.key_prefix}:*:req:*"
        return sum(1 for _ in self.redis.scan_iter(match=pattern, count=10_000))

    def keys(self) -> list[bytes]:
        return list(self.redis.scan_iter(count=10_000))

    def batches(self) -> list[Any]:
        """The emulator's batches, oldest first."""
        return sorted(self.emu.engine.store.batches.values(), key=lambda b: b.seq)

    def provider_lines(self) -> int:
        """Lines the emulator received across every batch it was given."""
        return sum(b.total for b in self.batches())


@pytest.fixture
def live(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Live]:
    with start_emulator(fast_emulator_config()) as emu:
        providers = [
            {
                "name": "emu",
                "base_url": emu.openai_base_url,
                "api_key": emu.api_key,
                "models": ["gpt-*", "text-embedding-*"],
            },
            {
                "name": "claude",
                "kind": "anthropic",
                "base_url": emu.anthropic_base_url,
                "api_key": emu.api_key,
                "models": ["claude-*"],
            },
            {
                "name": "gemini",
                "kind": "gemini",
                "base_url": emu.base_url,
                "api_key": emu.api_key,
                "models": ["gemini-*"],
            },
        ]
        settings = relay_settings(redis_url, emu, providers=providers)
        env = settings_env(settings)
        for name, value in env.items():
            if name.startswith("BATCHRELAY_"):
                monkeypatch.setenv(name, value)
        monkeypatch.delenv("BATCHRELAY_CONFIG_FILE", raising=False)
        monkeypatch.delenv("BATCHRELAY_PRICES", raising=False)
        pipeline = Pipeline(settings)
        client = redis.Redis.from_url(redis_url)
        live = Live(settings, env, emu, pipeline, client)
        previous = signal.signal(signal.SIGUSR1, _pipeline_failed)
        try:
            yield live
        finally:
            try:
                pipeline.stop()
            finally:
                signal.signal(signal.SIGUSR1, previous)
                pipeline.relay.close()
                client.close()


def _pipeline_failed(signum: int, frame: Any) -> None:
    raise PipelineFailed("the background pipeline raised; see the teardown error")


def chat_line(i: int, model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": f"question {i}"}]},
    }


def embedding_line(i: int) -> dict[str, Any]:
    return {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "text-embedding-3-small", "input": f"text {i}"},
    }


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
