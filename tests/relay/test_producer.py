"""The producer against a real redis-server: intake, idempotency, cancel, status, result."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import redis
from batchrelay.config import load_settings
from batchrelay.producer import (
    AsyncBatchRelay,
    BatchRelay,
    CancelError,
    CeleryTask,
    IdempotencyConflictError,
    InvalidCallbackError,
    InvalidMetadataError,
    MissingModelError,
    RequestNotFoundError,
    RequestTooLargeError,
    ResultTimeoutError,
    StreamingNotSupportedError,
    UnknownEndpointError,
    UnknownModelError,
    Webhook,
)
from batchrelay.producer.keys import Keys, tag_of

CHAT = "/v1/chat/completions"


def make_settings(redis_url: str, **extra):
    return load_settings(
        redis_url=redis_url,
        providers=[
            {
                "name": "oa",
                "base_url": "http://127.0.0.1:9/v1",
                "api_key": "sk-test",
                "models": ["gpt-*"],
                "max_line_bytes": 4096,
            },
            {
                "name": "emb",
                "base_url": "http://127.0.0.1:9/v1",
                "api_key": "sk-test",
                "models": ["text-embedding-*"],
                "endpoints": ["/v1/embeddings"],
            },
        ],
        webhook_allow_hosts=["127.0.0.1"],
        **extra,
    )


@pytest.fixture
def relay(redis_url):
    with BatchRelay(make_settings(redis_url)) as r:
        yield r


def chat(text: str, model: str = "gpt-4o-mini") -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def test_submit_stores_record_and_pending_atomically(relay):
    rid = relay.submit(CHAT, chat("hi"), metadata={"user": 7})
    assert rid.startswith("r_") and len(rid) <= 64
    keys = Keys()
    client = relay.redis
    tag = tag_of(rid)
    assert client.zscore(keys.pending(tag), rid) is not None
    assert int(client.get(keys.pbytes(tag))) == int(client.hget(keys.req(rid), "bytes"))
    st = relay.status(rid)
    assert (st.state, st.model, st.endpoint, st.profile) == ("pending", "gpt-4o-mini", CHAT, "oa")
    assert client.hexists(keys.groups, tag)


def test_routing_by_model_glob(relay):
    rid = relay.submit("/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"})
    assert relay.status(rid).profile == "emb"
    with pytest.raises(UnknownEndpointError, match="do not accept endpoint"):
        relay.submit(CHAT, chat("x", model="text-embedding-3-small"))


BAD_INPUTS = [
    ("/v1/nope", chat("x"), {}, UnknownEndpointError, "not served"),
    (CHAT, {"messages": []}, {}, MissingModelError, "no 'model'"),
    (CHAT, chat("x", model="claude-3"), {}, UnknownModelError, "matches no provider"),
    (CHAT, chat("x" * 5000), {}, RequestTooLargeError, "max_line_bytes"),
    (CHAT, {**chat("x"), "stream": True}, {}, StreamingNotSupportedError, "stream"),
    (CHAT, chat("x"), {"metadata": {"a": object()}}, InvalidMetadataError, "JSON"),
    (CHAT, chat("x"), {"metadata": {"a": "x" * 20000}}, InvalidMetadataError, "bytes"),
    (CHAT, chat("x"), {"metadata": ["a"]}, InvalidMetadataError, "object"),
    (CHAT, chat("x"), {"callback": Webhook("ftp://example.com/x")}, InvalidCallbackError, "scheme"),
    (CHAT, chat("x"), {"callback": "http://127.0.0.1/x"}, InvalidCallbackError, "Webhook"),
    (
        CHAT,
        chat("x"),
        {"callback": Webhook("http://u:p@127.0.0.1/x")},
        InvalidCallbackError,
        "credentials",
    ),
    (CHAT, chat("x"), {"callback": Webhook("http://10.0.0.1/x")}, InvalidCallbackError, "private"),
]


@pytest.mark.parametrize(("endpoint", "body", "kw", "exc", "match"), BAD_INPUTS)
def test_bad_input_is_refused_and_nothing_stored(relay, endpoint, body, kw, exc, match):
    with pytest.raises(exc, match=match):
        relay.submit(endpoint, body, **kw)
    assert relay.redis.dbsize() == 0


def test_submit_many_all_or_nothing(relay):
    items = [{"endpoint": CHAT, "body": chat(f"q{i}")} for i in range(5)]
    items.append({"endpoint": CHAT, "body": {"messages": []}})
    with pytest.raises(MissingModelError, match="item 5"):
        relay.submit_many(items)
    assert relay.redis.dbsize() == 0
    ids = relay.submit_many(items[:5] * 500)
    assert len(set(ids)) == 2500
    tag = tag_of(ids[0])
    assert relay.redis.zcard(Keys().pending(tag)) == 2500


def test_idempotency_key_dedupes_and_detects_conflicts(relay):
    a = relay.submit(CHAT, chat("same"), idempotency_key="k1")
    b = relay.submit(CHAT, chat("same"), idempotency_key="k1")
    assert a == b
    assert relay.redis.zcard(Keys().pending(tag_of(a))) == 1
    with pytest.raises(IdempotencyConflictError, match="different"):
        relay.submit(CHAT, chat("other"), idempotency_key="k1")
    many = relay.submit_many(
        [{"endpoint": CHAT, "body": chat("same"), "idempotency_key": "k1"}]
        + [{"endpoint": CHAT, "body": chat("n"), "idempotency_key": "k2"}] * 2
    )
    assert many[0] == a and many[1] == many[2] != a
    assert relay.redis.zcard(Keys().pending(tag_of(a))) == 2


def test_idempotent_resubmit_recovers_a_half_stored_request(relay):
    """A crash after the key was taken but before the record was written: the retry stores it."""
    keys = Keys()
    rid = relay.submit(CHAT, chat("lost"), idempotency_key="k-crash")
    relay.redis.delete(keys.req(rid))
    relay.redis.zrem(keys.pending(tag_of(rid)), rid)
    assert relay.submit(CHAT, chat("lost"), idempotency_key="k-crash") == rid
    assert relay.status(rid).state == "pending"
    assert relay.redis.zscore(keys.pending(tag_of(rid)), rid) is not None


def test_cancel_only_while_pending(relay):
    rid = relay.submit(CHAT, chat("c"), callback=CeleryTask("app.tasks.got"))
    relay.cancel(rid)
    assert relay.status(rid).state == "cancelled"
    assert relay.redis.zcard(Keys().pending(tag_of(rid))) == 0
    assert int(relay.redis.get(Keys().pbytes(tag_of(rid)))) == 0
    relay.cancel(rid)  # cancelling twice is a no-op
    done = relay.submit(CHAT, chat("e"))
    relay.redis.zrem(Keys().pending(tag_of(done)), done)
    relay.redis.hset(Keys().req(done), "state", "succeeded")
    with pytest.raises(CancelError, match="already final"):
        relay.cancel(done)
    other = relay.submit(CHAT, chat("d"))
    relay.redis.zrem(Keys().pending(tag_of(other)), other)
    relay.redis.hset(Keys().req(other), "state", "in_batch")
    with pytest.raises(CancelError, match="already submitted"):
        relay.cancel(other)
    with pytest.raises(RequestNotFoundError):
        relay.cancel("r_000000000000_0000000000000000000000000a")
    with pytest.raises(RequestNotFoundError):
        relay.status("nonsense")


def test_result_blocks_until_final_without_polling(relay):
    rid = relay.submit(CHAT, chat("wait"))
    with pytest.raises(ResultTimeoutError):
        relay.result(rid, timeout=0.2)

    def finish(after: float) -> None:
        time.sleep(after)
        relay.cancel(rid)

    def hmgets() -> int:
        stats = relay.redis.info("commandstats").get("cmdstat_hmget", {})
        return int(stats.get("calls", 0))

    before = hmgets()
    threading.Thread(target=finish, args=(1.5,)).start()
    started = time.monotonic()
    payload = relay.result(rid, timeout=5)
    assert payload["status"] == "cancelled" and payload["id"] == rid
    assert 1.4 < time.monotonic() - started < 3  # woken by the announcement, not a timer
    # One read when it starts and one when woken: a poll loop would read every few ms.
    assert hmgets() - before <= 3


def test_async_client(redis_url):
    async def run() -> None:
        async with AsyncBatchRelay(make_settings(redis_url)) as relay:
            rid = await relay.submit(CHAT, chat("a"), idempotency_key="ak")
            assert rid == await relay.submit(CHAT, chat("a"), idempotency_key="ak")
            ids = await relay.submit_many([{"endpoint": CHAT, "body": chat("b")}] * 3)
            assert len(set(ids)) == 3
            assert (await relay.status(rid)).state == "pending"
            waiter = asyncio.create_task(relay.result(rid, timeout=5))
            await asyncio.sleep(0.1)
            await relay.cancel(rid)
            assert (await waiter)["status"] == "cancelled"

    asyncio.run(run())


def test_producer_never_imports_celery(tmp_path):
    import subprocess
    import sys

    code = (
        "import batchrelay, batchrelay.producer, sys; "
        "assert 'celery' not in sys.modules, 'celery imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def test_redis_password_url(tmp_path):
    from tests._redis import RedisServer

    server = RedisServer(tmp_path, password="s3cret")
    server.start()
    try:
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port).ping()
        with BatchRelay(make_settings(server.url)) as r:
            assert r.status(r.submit(CHAT, chat("auth"))).state == "pending"
    finally:
        server.stop()
