"""API keys and webhook secrets never appear in logs, Redis records or Celery task arguments
(docs/architecture.md, promise 10): a real worker and beat run at DEBUG while every Redis value,
including the broker's queued and unacked task messages, is scanned for them."""

from __future__ import annotations

import base64
import threading
from pathlib import Path

import orjson
import redis

from batchrelay import BatchRelay, Webhook
from batchrelay.emulator import start_emulator
from tests._receiver import WebhookReceiver
from tests._stack import Stack
from tests.relay.harness import CHAT, chat, fast_emulator_config, relay_settings

API_KEY = "sk-batchrelay-TOPSECRET-0123456789"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"TOPSECRET-webhook-key-32-bytes!!").decode()
# A receiver's token in its callback URL: stored with the request, never logged.
CALLBACK_TOKEN = "cb-TOPSECRET-token-42"
NEEDLES = (API_KEY, WEBHOOK_SECRET, WEBHOOK_SECRET.removeprefix("whsec_"))


TASKS_SEEN: set[str] = set()


def _strings(value: bytes) -> list[bytes]:
    """The value and, for a broker message, its base64-encoded body (where task args live)."""
    out = [value]
    try:
        message = orjson.loads(value)
    except orjson.JSONDecodeError:
        return out
    if isinstance(message, list) and message and isinstance(message[0], dict):
        message = message[0]  # kombu's unacked hash holds [message, exchange, routing key]
    if isinstance(message, dict) and isinstance(message.get("body"), str):
        TASKS_SEEN.add(str((message.get("headers") or {}).get("task")))
        try:
            out.append(base64.b64decode(message["body"]))
        except ValueError:
            out.append(message["body"].encode())
    return out


def scan_redis(client: redis.Redis) -> tuple[int, list[str]]:
    """Every value in every key; returns how many were read and which hold a secret."""
    read, leaks = 0, []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            values = [client.get(key) or b""]
        elif kind == "hash":
            values = [v for kv in client.hgetall(key).items() for v in kv]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "set":
            values = list(client.smembers(key))
        elif kind == "zset":
            values = client.zrange(key, 0, -1)
        else:
            values = []
        for value in [key, *values]:
            for text in _strings(value):
                read += 1
                if any(n.encode() in text for n in NEEDLES):
                    leaks.append(key.decode())
    return read, leaks


def test_secrets_stay_out_of_logs_redis_and_task_args(redis_url, tmp_path):
    config = fast_emulator_config(api_keys=[API_KEY], processing_rate_rps=500)
    with start_emulator(config) as emu, WebhookReceiver() as receiver:
        # Small delivery chunks sent one attempt at a time: many deliver task messages wait in
        # the queue (or kombu's unacked hash) long enough to be scanned.
        settings = relay_settings(
            redis_url,
            emu,
            webhook_secrets=[WEBHOOK_SECRET],
            delivery_chunk=10,
            delivery_concurrency=1,
        )
        assert emu.api_key == API_KEY
        stack = Stack(settings, tmp_path)
        stack.log_level = "DEBUG"
        producer = BatchRelay(settings)
        client = redis.Redis.from_url(redis_url)
        leaks: list[str] = []
        scans: list[int] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(0.3):
                read, found = scan_redis(client)
                scans.append(read)
                leaks.extend(found)

        watcher = threading.Thread(target=watch, daemon=True)
        try:
            watcher.start()
            hook = Webhook(f"{receiver.url}/hook?token={CALLBACK_TOKEN}")
            items = [
                {"endpoint": CHAT, "body": chat(f"t{i}"), "callback": hook} for i in range(300)
            ]
            ids = producer.submit_many(items)
            stack.start_worker("w1")
            stack.start_beat()
            stack.wait_until(lambda: receiver.wait_for(len(ids), 0.01), 90, "deliveries")
        finally:
            stop.set()
            watcher.join()
            stack.stop()
            producer.close()
        read, found = scan_redis(client)
        client.close()
        assert receiver.verify_all(WEBHOOK_SECRET) >= len(ids)
        assert len(scans) >= 3 and read > 1000
        # Task messages were really scanned (which ones a 0.3 s scan catches varies: beat now
        # sends a dispatcher only when work is due, so often only the deliveries are caught).
        assert any(t.startswith("batchrelay.") for t in TASKS_SEEN), TASKS_SEEN
        assert not leaks and not found, sorted(set(leaks + found))
        logs = stack.logs() + "".join(p.read_text() for p in tmp_path.glob("*.log"))
        assert "batchrelay.submit" in logs  # the logs were really captured
        for needle in (*NEEDLES, CALLBACK_TOKEN):
            assert needle not in logs


def _logs(folder: Path) -> str:
    return "".join(p.read_text() for p in folder.glob("*.log"))


def test_callback_url_query_is_not_logged(redis_url, tmp_path):
    """A token in a callback URL's query stays out of the worker's log at INFO, the level
    docker-compose runs: neither our code nor the webhook client shows it (aiohttp writes no
    per-request log line; the task's result line, which Flower shows too, names counts only)."""
    token = CALLBACK_TOKEN
    with start_emulator(fast_emulator_config()) as emu, WebhookReceiver() as receiver:
        settings = relay_settings(redis_url, emu)
        stack = Stack(settings, tmp_path)
        producer = BatchRelay(settings)
        try:
            hook = Webhook(f"{receiver.url}/hook?token={token}")
            ids = producer.submit_many(
                [{"endpoint": CHAT, "body": chat(f"q{i}"), "callback": hook} for i in range(3)]
            )
            stack.start_worker("w1")
            stack.start_beat()
            stack.wait_until(lambda: receiver.wait_for(len(ids), 0.01), 60, "deliveries")
            # The task logs its result after the outcomes are written, a moment after the
            # receiver has them: stop only once that line is there.
            stack.wait_until(
                lambda: "'delivered': " in _logs(tmp_path), 30, "the deliver task's result line"
            )
        finally:
            stack.stop()
            producer.close()
        assert {d.path for d in receiver.received} == {f"/hook?token={token}"}
        logs = _logs(tmp_path)
        assert "Task batchrelay.deliver[" in logs and "'delivered': " in logs  # logged, at INFO
        assert token not in logs
