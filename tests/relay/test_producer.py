"""The producer against a real redis-server: intake, idempotency, cancel, status, result."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import pytest
import redis

from batchrelay import (
    AsyncBatchRelay,
    BatchRelay,
    BatchRelayError,
    CancelError,
    CeleryTask,
    IdempotencyConflictError,
    InvalidCallbackError,
    InvalidMetadataError,
    InvalidRequestError,
    MissingModelError,
    QuotaExceededError,
    RelayUnavailableError,
    RequestNotFoundError,
    RequestTooLargeError,
    ResultTimeoutError,
    StreamingNotSupportedError,
    UnknownEndpointError,
    UnknownModelError,
    Webhook,
)
from batchrelay.config import load_settings
from batchrelay.config.tenants import Tenant, Tenants, key_digest
from batchrelay.config.urls import redacted
from batchrelay.producer import commands
from batchrelay.producer.core import OPEN_GRACE_MS
from batchrelay.producer.keys import Keys, new_request_id, tag_of

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


def test_bulk_statuses_results_and_wait(relay):
    """The bulk calls `batchrelay run` uses: ids in order, None for what is not there."""
    ids = relay.submit_many([{"endpoint": CHAT, "body": chat(f"b{i}")} for i in range(3)])
    gone = "r_000000000000_0000000000000000000000000a"
    relay.cancel(ids[0])
    states = [s and s.state for s in relay.statuses([*ids, gone])]
    assert states == ["cancelled", "pending", "pending", None]
    with pytest.raises(ResultTimeoutError, match="2 requests are not final"):
        relay.wait(ids, timeout=0.3)
    seen = []
    threading.Timer(0.5, lambda: [relay.cancel(r) for r in ids[1:]]).start()
    counts = relay.wait([*ids, gone], timeout=5, progress=seen.append)
    assert (counts.cancelled, counts.missing, counts.open) == (3, 1, 0)
    assert seen[0].pending == 2 and seen[-1] == counts
    payloads = relay.results([*ids, gone])
    assert [p and p["status"] for p in payloads] == ["cancelled"] * 3 + [None]
    with pytest.raises(RequestNotFoundError):
        relay.statuses(["nonsense"])


def test_async_bulk_calls(redis_url):
    async def run() -> None:
        async with AsyncBatchRelay(make_settings(redis_url)) as relay:
            ids = await relay.submit_many([{"endpoint": CHAT, "body": chat("ab")}] * 2)
            assert ids.new == 2
            assert [s.state for s in await relay.statuses(ids)] == ["pending", "pending"]
            asyncio.get_running_loop().call_later(0.2, asyncio.ensure_future, relay.cancel(ids[0]))
            asyncio.get_running_loop().call_later(0.3, asyncio.ensure_future, relay.cancel(ids[1]))
            counts = await relay.wait(ids, timeout=5)
            assert counts.cancelled == 2
            assert [p["status"] for p in await relay.results(ids)] == ["cancelled"] * 2

    asyncio.run(run())


def keyed(prefix: str, n: int) -> list[dict]:
    return [
        {"endpoint": CHAT, "body": chat(f"{prefix}{i}"), "idempotency_key": f"{prefix}{i}"}
        for i in range(n)
    ]


def test_submit_many_counts_what_it_stored(relay):
    items = [
        {"endpoint": CHAT, "body": chat(f"n{i}"), "idempotency_key": f"n{i}"} for i in range(3)
    ]
    first = relay.submit_many(items[:2])
    again = relay.submit_many(items)
    assert (first.new, again.new) == (2, 1) and again[:2] == first


def test_a_bad_key_deep_in_submit_many_stores_nothing(relay):
    """Item 1,500 of 2,000 with a key Redis cannot encode: refused before the first chunk."""
    items = [
        {"endpoint": CHAT, "body": chat(f"u{i}"), "idempotency_key": f"u{i}"} for i in range(2000)
    ]
    items[1500] = {**items[1500], "idempotency_key": "bad\ud800"}
    with pytest.raises(InvalidRequestError, match=r"item 1500: idempotency_key is not valid"):
        relay.submit_many(items)
    assert relay.redis.dbsize() == 0
    with pytest.raises(InvalidRequestError, match="body 'model' is not valid Unicode"):
        relay.submit(CHAT, chat("x", "gpt-\ud800"))
    with pytest.raises(InvalidRequestError, match="idempotency_key is not valid Unicode"):
        relay.submit(CHAT, chat("x"), idempotency_key="bad\ud800")
    assert relay.redis.dbsize() == 0


def test_a_conflict_deep_in_submit_many_stores_nothing(relay):
    """Keys are settled for every chunk before any request is stored."""
    first = relay.submit(CHAT, chat("taken"), idempotency_key="c1500")
    before = relay.redis.dbsize()
    items = [
        {"endpoint": CHAT, "body": chat(f"c{i}"), "idempotency_key": f"c{i}"} for i in range(2000)
    ]
    with pytest.raises(IdempotencyConflictError, match=f"item 1500: .*{first}"):
        relay.submit_many(items)
    assert relay.redis.dbsize() == before


@pytest.mark.parametrize(
    "change",
    [
        {"endpoint": "/v1/embeddings", "body": {"model": "text-embedding-3-small", "input": "k"}},
        {"body": chat("another")},
        {"callback": Webhook("http://127.0.0.1:9/other")},
        {"callback": CeleryTask("app.tasks.got")},
        {"metadata": {"user": 8}},
        {"metadata": None},
    ],
    ids=["endpoint", "body", "callback", "callback kind", "metadata", "no metadata"],
)
def test_a_key_reused_with_any_other_field_conflicts(relay, change):
    first = {
        "endpoint": CHAT,
        "body": chat("same"),
        "callback": Webhook("http://127.0.0.1:9/hook"),
        "metadata": {"user": 7},
        "idempotency_key": "k-all",
    }
    rid = relay.submit_many([first])[0]
    assert relay.submit_many([first]) == [rid]
    with pytest.raises(IdempotencyConflictError, match=rid):
        relay.submit_many([{**first, **change}])
    record = relay.redis.hmget(Keys().req(rid), "callback", "metadata")
    assert b"/hook" in record[0] and record[1] == b'{"user":7}'


def test_nan_and_infinity_are_refused(relay):
    for value in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(InvalidRequestError, match=r"body\.temperature is"):
            relay.submit(CHAT, {**chat("n"), "temperature": value})
        with pytest.raises(InvalidMetadataError, match=r"metadata\.scores\[1\] is"):
            relay.submit(CHAT, chat("n"), metadata={"scores": [1.0, value]})
    assert relay.submit(CHAT, {**chat("n"), "stop": None})  # a plain null is fine
    assert relay.redis.dbsize() > 0


def unreachable_settings(tmp_path) -> tuple[object, int]:
    """Settings naming a Redis that is not there, with a password in the URL."""
    from tests._redis import free_port

    port = free_port()
    return make_settings(f"redis://:s3cret-pw@127.0.0.1:{port}/0"), port


def test_every_call_says_redis_is_unavailable(tmp_path):
    settings, port = unreachable_settings(tmp_path)
    masked = f"redis://:***@127.0.0.1:{port}/0"
    rid = "r_000000000000_0000000000000000000000000a"
    with BatchRelay(settings) as relay:
        calls = [
            lambda: relay.submit(CHAT, chat("x")),
            lambda: relay.submit_many([{"endpoint": CHAT, "body": chat("x")}]),
            lambda: relay.status(rid),
            lambda: relay.statuses([rid]),
            lambda: relay.result(rid, timeout=1),
            lambda: relay.results([rid]),
            lambda: relay.wait([rid], timeout=1),
            lambda: relay.cancel(rid),
        ]
        for call in calls:
            with pytest.raises(RelayUnavailableError) as info:
                call()
            assert isinstance(info.value, BatchRelayError)
            assert masked in str(info.value) and "s3cret-pw" not in str(info.value)

    async def run() -> None:
        async with AsyncBatchRelay(settings) as relay:
            with pytest.raises(RelayUnavailableError, match=re.escape(masked)):
                await relay.submit(CHAT, chat("x"))
            with pytest.raises(RelayUnavailableError, match=re.escape(masked)):
                await relay.result(rid, timeout=1)

    asyncio.run(run())


def test_redacted_url_hides_every_password():
    assert redacted("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert redacted("rediss://user:pw@[::1]:6380/2") == "rediss://user:***@[::1]:6380/2"
    assert redacted("redis://h:1/0?password=pw&db=1") == "redis://h:1/0?password=***&db=1"
    assert redacted("redis://h:1/0") == "redis://h:1/0"


def test_every_script_command_has_one_typed_function():
    """relay.lua's commands and producer.commands' functions are the same set."""
    import inspect

    lua = commands.SOURCE
    in_script = set(re.findall(r"if cmd == '(\w+)' then", lua))
    functions = {
        name
        for name, fn in vars(commands).items()
        if inspect.isfunction(fn) and fn.__module__ == commands.__name__ and name in in_script
    }
    assert functions == in_script


def test_max_pending_heals_what_crashes_left_in_the_open_set(redis_url):
    """A producer killed between `admit` and `intake` leaves an id without a record in the
    tenant's `open` set, a canceller killed before giving its request back leaves a cancelled
    one: a refused submit drops those (when older than the grace) and is admitted; a real
    pending request and a young entry still count."""
    tenants = Tenants.of([Tenant(name="t", key_sha256=[key_digest("k")], max_pending=2)])
    settings = make_settings(redis_url)
    client = redis.Redis.from_url(redis_url)
    keys = Keys(settings.key_prefix)
    open_key = keys.tenant_open("t")
    with BatchRelay(settings, tenants=tenants) as producer:
        cancelled = producer.submit(CHAT, chat("one"), tenant="t")
        pending = producer.submit(CHAT, chat("two"), tenant="t")
        commands.run(client, commands.cancel(keys, cancelled, 0, 60_000))  # not given back
        ghost = new_request_id(tag_of(pending))  # admitted, never stored
        old = int(time.time() * 1000) - OPEN_GRACE_MS - 1000
        client.zadd(open_key, {ghost: old, cancelled: old, pending: old})
        third = producer.submit(CHAT, chat("three"), tenant="t")
        assert {m.decode() for m in client.zrange(open_key, 0, -1)} == {pending, third}
        young = new_request_id(tag_of(pending))
        client.zadd(open_key, {young: int(time.time() * 1000)})
        with pytest.raises(QuotaExceededError):
            producer.submit(CHAT, chat("four"), tenant="t")
        assert {m.decode() for m in client.zrange(open_key, 0, -1)} == {pending, third, young}
    client.close()
