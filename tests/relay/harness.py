"""Settings and a synchronous driver for pipeline tests: the worker's plain functions, run in
the test's thread against real Redis, the emulator over HTTP and a real webhook receiver."""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Callable
from typing import Any

from batchrelay.config import Settings, load_settings
from batchrelay.worker.collection import collect_batch
from batchrelay.worker.context import Relay
from batchrelay.worker.delivery import deliver_chunk, lease_due
from batchrelay.worker.packing import aggregate
from batchrelay.worker.polling import poll_batch
from batchrelay.worker.submission import submit_batch
from batchrelay.worker.sweep import lease_due_batches

SECRET = "whsec_" + base64.b64encode(b"batchrelay-test-secret-32-bytes!").decode()
CHAT = "/v1/chat/completions"
EMB = "/v1/embeddings"


def fast_emulator_config(**overrides: Any):
    from batchrelay.emulator import EmulatorConfig

    values: dict[str, Any] = {
        "port": 0,
        "validating_delay_s": 0.05,
        "processing_rate_rps": 50_000,
        "finalizing_delay_s": 0.05,
        "embedding_dim": 8,
    }
    values.update(overrides)
    return EmulatorConfig(**values)


def relay_settings(
    redis_url: str, emu: Any, profile: dict[str, Any] | None = None, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "providers": [
            {
                "name": "emu",
                "base_url": emu.openai_base_url,
                "api_key": emu.api_key,
                "models": ["gpt-*", "text-embedding-*", "nomodel-*"],
                **(profile or {}),
            }
        ],
        "flush_max_wait_s": 0.2,
        "poll_interval_s": 0.1,
        "poll_max_interval_s": 0.5,
        "tick_s": 0.2,
        "lease_s": 5,
        "http_timeout_s": 3,
        "http_max_retries": 4,
        "token_limit_backoff_s": 0.3,
        "delivery_retry_schedule_s": [0.1, 0.2, 0.4],
        "webhook_secrets": [SECRET],
        "webhook_allow_hosts": ["127.0.0.1"],
        "result_retention_s": 3600,
        "task_time_limit_s": 60,
        "visibility_timeout_s": 120,
    }
    values.update(overrides)
    return load_settings(**values)


def chat(text: str, model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def tick(
    relay: Relay, send_task: Callable[..., None] | None = None, *, deliver: bool = True
) -> None:
    """One beat of the whole pipeline, with every task run inline (deliveries only if
    `deliver`)."""
    for bid in aggregate(relay):
        submit_batch(relay, bid)
    for action, bid in lease_due_batches(relay):
        if action == "submit":
            submit_batch(relay, bid)
        elif action == "collect" or poll_batch(relay, bid) == "collect":
            collect_batch(relay, bid)
    for chunk in lease_due(relay) if deliver else ():
        deliver_chunk(relay, chunk.request_ids, chunk.leased_until_ms, send_task or _no_tasks)


def _no_tasks(name: str, payload: dict[str, Any], queue: str | None) -> None:
    raise AssertionError(f"unexpected Celery callback {name}")


def drive(
    relay: Relay,
    until: Callable[[], bool],
    *,
    timeout: float = 30.0,
    send_task: Callable[..., None] | None = None,
    swallow: tuple[type[BaseException], ...] = (),
    deliver: bool = True,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(swallow):
            tick(relay, send_task, deliver=deliver)
        if until():
            return
        time.sleep(0.05)
    raise AssertionError("pipeline did not reach the expected state in time")


def all_final(producer: Any, ids: list[str]) -> Callable[[], bool]:
    return lambda: all(producer.status(i).final for i in ids)
