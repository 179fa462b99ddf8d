"""A live `batchrelay serve` (the CLI, as a subprocess) in front of a real Celery worker and
beat, private Redis, the emulator over HTTP and a webhook receiver; one stack per session,
tests isolated by tenant (each quota test has a tenant of its own)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from batchrelay.config import Settings
from batchrelay.config.tenants import key_digest
from batchrelay.emulator import EmulatorHandle, start_emulator
from tests._receiver import WebhookReceiver
from tests._redis import RedisServer, free_port
from tests._stack import ROOT, Stack, settings_env
from tests.relay.harness import fast_emulator_config, relay_settings

# name -> quotas; every tenant's API key is "key-<name>"
TENANTS: dict[str, dict[str, object]] = {
    "alpha": {},
    "beta": {},
    "node": {},
    "schema": {},
    "bench": {},
    "costs": {},
    "tight": {"max_pending": 2},
    "daily": {"requests_per_day": 3},
    "cheap": {"usd_per_day": 0.0001},
}


def api_key(tenant: str) -> str:
    return f"key-{tenant}"


def tenants_json() -> str:
    return orjson.dumps(
        [
            {"name": name, "key_sha256": [key_digest(api_key(name))], **quota}
            for name, quota in TENANTS.items()
        ]
    ).decode()


@dataclass
class Api:
    url: str
    settings: Settings
    receiver: WebhookReceiver
    emulator: EmulatorHandle
    env: dict[str, str]

    def client(self, tenant: str | None = "alpha", **kwargs: object) -> httpx.Client:
        headers = {} if tenant is None else {"Authorization": f"Bearer {api_key(tenant)}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=70, **kwargs)


def start_serve(env: dict[str, str], logdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`batchrelay serve` on a free port, once it answers /healthz (200, or 503 without
    Redis)."""
    port = free_port()
    log = (logdir / f"serve-{port}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrelay", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code in (200, 503):
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"batchrelay serve did not start; see {log.name}")
        time.sleep(0.1)


@pytest.fixture(scope="session")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    logdir = tmp_path_factory.mktemp("api-logs")
    server = RedisServer(tmp_path_factory.mktemp("api-redis"))
    server.start()
    emu = start_emulator(fast_emulator_config(validating_delay_s=0.5))
    receiver = WebhookReceiver().start()
    settings = relay_settings(
        server.url,
        emu,
        {"max_line_bytes": 1_000_000},
        flush_max_wait_s=1.5,
        tick_s=0.25,
        poll_interval_s=0.25,
        lease_s=4,
        http_timeout_s=2,
    )
    stack = Stack(settings, logdir)
    stack.start_worker()
    stack.start_beat()
    env = {**settings_env(settings), "BATCHRELAY_TENANTS": tenants_json()}
    proc, url = start_serve(env, logdir)
    try:
        yield Api(url, settings, receiver, emu, env)
    finally:
        proc.terminate()
        proc.wait(15)
        stack.stop()
        receiver.close()
        emu.stop()
        server.stop()


@pytest.fixture
def alpha(api: Api) -> Iterator[httpx.Client]:
    with api.client("alpha") as client:
        yield client


def chat_request(text: str, **extra: object) -> dict[str, object]:
    return {
        "endpoint": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]},
        **extra,
    }
