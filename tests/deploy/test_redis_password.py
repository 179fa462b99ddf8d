"""A Redis password stays out of everything an operator or a Flower user can see, and beat
started before Redis waits for it: real redis-server with `requirepass`, a real worker, beat,
`celery inspect conf` and Flower over HTTP."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from batchrelay.config import Settings
from tests._redis import RedisServer, free_port
from tests._stack import ROOT, Stack
from tests.relay.harness import relay_settings

PASSWORD = "redis-TOPSECRET-pass-42"
FLOWER_AUTH = ("ops", "flower-pass")
NO_PROVIDER = type("E", (), {"openai_base_url": "http://127.0.0.1:1/v1", "api_key": "k"})


def settings_for(server: RedisServer) -> Settings:
    return relay_settings(server.url, NO_PROVIDER)


def beat_ticks(client) -> bool:
    """Beat loaded its schedule into Redis and holds the lock, which it renews every tick (an
    idle beat publishes no task, so the queue is no evidence)."""
    return client.zcard("br:redbeat:schedule") >= 4 and bool(client.exists("br:redbeat:lock"))


@pytest.fixture
def locked_redis(tmp_path: Path):
    server = RedisServer(tmp_path, password=PASSWORD)
    server.start()
    yield server
    server.stop()


def celery(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "batchrelay.worker", *args],
        cwd=ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_settings_repr_masks_the_password_but_keeps_the_url(locked_redis):
    settings = settings_for(locked_redis)
    assert settings.redis_url.get_secret_value() == locked_redis.url
    shown = f"redis://:***@127.0.0.1:{locked_redis.port}/0"
    assert str(settings.redis_url) == shown
    assert shown in repr(settings) and PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings.model_dump()) + settings.model_dump_json()


def test_password_stays_out_of_inspect_conf_flower_and_logs(locked_redis, tmp_path):
    stack = Stack(settings_for(locked_redis), tmp_path)
    flower_port = free_port()
    flower_log = (tmp_path / "flower.log").open("wb")
    flower = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "batchrelay.worker", "flower",
         f"--port={flower_port}", "--address=127.0.0.1"],
        cwd=ROOT,
        env={**stack.env, "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH)},
        stdout=flower_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    flower_log.close()
    try:
        stack.start_worker("w1")
        stack.start_beat()
        stack.wait_until(lambda: "ready." in stack.logs(), 60, "the worker to be ready")

        conf = celery(stack, "inspect", "conf", "--timeout", "10")
        assert conf.returncode == 0, conf.stderr
        assert "redbeat_redis_url" in conf.stdout and "broker_url" in conf.stdout, conf.stdout
        assert f"127.0.0.1:{locked_redis.port}" in conf.stdout  # the URL is there, masked
        assert PASSWORD not in conf.stdout + conf.stderr

        def workers() -> dict:
            try:
                reply = httpx.get(
                    f"http://127.0.0.1:{flower_port}/api/workers",
                    params={"refresh": "1"},
                    auth=FLOWER_AUTH,
                    timeout=20,
                )
            except httpx.HTTPError:
                return {}
            data = reply.json() if reply.status_code == 200 else {}
            return data if any(w.get("conf") for w in data.values()) else {}

        stack.wait_until(workers, 60, "Flower to show the worker's conf")
        shown = httpx.get(
            f"http://127.0.0.1:{flower_port}/api/workers", auth=FLOWER_AUTH, timeout=20
        ).text
        assert "redbeat_redis_url" in shown and PASSWORD not in shown

        # Beat really connected with the clear URL it never showed: its schedule is in Redis.
        client = locked_redis.client()
        stack.wait_until(lambda: beat_ticks(client), 30, "beat to tick")
        client.close()
    finally:
        stack.stop()
        flower.terminate()
        flower.wait(20)
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("*.log"))
    assert "beat: Acquired lock" in logs
    assert PASSWORD not in logs


def test_beat_started_before_redis_waits_for_it(tmp_path):
    server = RedisServer(tmp_path, password=PASSWORD)  # not started yet
    stack = Stack(settings_for(server), tmp_path)
    try:
        beat = stack.start_beat()
        waiting = f"beat: Redis at redis://:***@127.0.0.1:{server.port}/0 unavailable"
        stack.wait_until(lambda: waiting in stack.logs(), 30, "beat to say it waits for Redis")
        time.sleep(2)
        assert beat.poll() is None, stack.logs()
        server.start()
        client = server.client()
        stack.wait_until(lambda: beat_ticks(client), 30, "beat to tick")
        client.close()
    finally:
        stack.stop()
        server.stop()
    assert PASSWORD not in "".join(p.read_text(errors="replace") for p in tmp_path.glob("*.log"))
