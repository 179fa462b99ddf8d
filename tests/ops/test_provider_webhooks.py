"""`POST /v1/provider-webhooks/{profile}` on `batchrelay metrics`, over real HTTP and Redis:
what is verified, refused, deduplicated, and what it changes (one batch's due-time)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest
import redis
from standardwebhooks import Webhook

from batchrelay.producer.keys import Keys, new_batch_id
from tests.ops._exporter import exporter, value
from tests.relay.harness import relay_settings

SECRET = "whsec_" + base64.b64encode(b"provider-webhook-secret-32-bytes").decode()
OTHER = "whsec_" + base64.b64encode(b"another-secret-of-thirty-two-by!").decode()
FAR = 10**13  # a next-poll time far in the future (ms)
GEM_TAG = "abcdef012345"


def webhook_settings(redis_url: str):
    emu = type("E", (), {"openai_base_url": "http://127.0.0.1:9/v1", "api_key": "k"})
    base = {"base_url": emu.openai_base_url, "api_key": "k"}
    providers = [
        {"name": "emu", **base, "models": ["gpt-*"], "webhook_secret": SECRET},
        {"name": "plain", **base, "models": ["claude-*"]},
        {
            "name": "gem",
            "kind": "gemini",
            "base_url": "http://127.0.0.1:9",
            "api_key": "k",
            "models": ["gemini-*"],
            "webhook_secret": SECRET,
        },
    ]
    return relay_settings(redis_url, emu, providers=providers)


@pytest.fixture(scope="module")
def running_exporter(redis_server, tmp_path_factory):
    """One `batchrelay metrics` process for the module: what a webhook changes lives in Redis,
    which each test empties (`redis_url`); its counters are read as differences."""
    with exporter(webhook_settings(redis_server.url), tmp_path_factory.mktemp("metrics")) as m:
        yield m


@pytest.fixture
def setup(running_exporter, redis_url):
    keys = Keys(webhook_settings(redis_url).key_prefix)
    client = redis.Redis.from_url(redis_url)
    bid = new_batch_id("0123456789ab")
    client.hset(keys.pbatches("emu"), "batch_ours", bid)
    client.zadd(keys.inflight("0123456789ab"), {bid: FAR})
    gem = new_batch_id(GEM_TAG)  # a Gemini batch, known by its resource name
    client.hset(keys.pbatches("gem"), "batches/gem_ours", gem)
    client.zadd(keys.inflight(GEM_TAG), {gem: FAR})
    yield running_exporter, client, keys, bid
    client.close()


def post(metrics, body: dict | bytes, *, secret=SECRET, msg_id="wh_1", at=None, profile="emu"):
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    at = at or datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id, at, data.decode())
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }
    return httpx.post(metrics.hook_url(profile), content=data, headers=headers, timeout=10)


def event(kind="batch.completed", batch="batch_ours") -> dict:
    return {"object": "event", "id": "evt_1", "type": kind, "created_at": 0, "data": {"id": batch}}


def test_a_verified_batch_event_makes_its_batch_due_once(setup):
    metrics, client, keys, bid = setup
    before = metrics.scrape()
    reply = post(metrics, event())
    assert reply.status_code == 200 and reply.json()["outcome"] == "due_now", reply.text
    due = client.zscore(keys.inflight("0123456789ab"), bid)
    assert due < FAR
    client.zadd(keys.inflight("0123456789ab"), {bid: FAR})
    again = post(metrics, event())  # the provider retrying the same webhook-id
    assert again.json()["outcome"] == "duplicate"
    assert client.zscore(keys.inflight("0123456789ab"), bid) == FAR
    for kind in ("batch.failed", "batch.expired", "batch.cancelled"):
        assert post(metrics, event(kind), msg_id=f"wh_{kind}").json()["outcome"] == "due_now"
    scrape = metrics.scrape()

    def counted(outcome: str) -> float:
        name = "batchrelay_provider_webhooks_total"
        return value(scrape, name, outcome=outcome) - value(before, name, outcome=outcome)

    assert counted("due_now") == 4
    assert counted("duplicate") == 1


@pytest.mark.parametrize(
    ("how", "status", "says"),
    [
        ("wrong secret", 401, "signature"),
        ("300 s old", 401, "too old"),
        ("unknown profile", 404, "no provider profile named 'nope'"),
        ("profile without a secret", 404, "has no webhook_secret"),
        ("body over 64 KiB", 413, "body over"),
        ("no data.id", 400, "without data.id"),
    ],
)
def test_refused_calls_change_nothing(setup, how, status, says):
    metrics, client, keys, bid = setup
    kwargs: dict = {}
    body: dict | bytes = event()
    if how == "wrong secret":
        kwargs["secret"] = OTHER
    elif how == "300 s old":
        kwargs["at"] = datetime.now(UTC) - timedelta(seconds=301)
    elif how == "unknown profile":
        kwargs["profile"] = "nope"
    elif how == "profile without a secret":
        kwargs["profile"] = "plain"
    elif how == "body over 64 KiB":
        body = orjson.dumps({**event(), "pad": "x" * 70_000})
    else:
        body = {**event(), "data": {}}
    reply = post(metrics, body, **kwargs)
    assert reply.status_code == status, reply.text
    assert says in reply.json()["error"]
    assert client.zscore(keys.inflight("0123456789ab"), bid) == FAR
    # Not remembered as seen: the genuine call with the same webhook-id still counts.
    assert post(metrics, event()).json()["outcome"] == "due_now"


def test_other_events_and_other_batches_are_acknowledged_and_left_alone(setup):
    metrics, client, keys, bid = setup
    reply = post(metrics, {**event(), "type": "response.completed"}, msg_id="wh_a")
    assert reply.status_code == 200 and reply.json()["outcome"] == "ignored"
    reply = post(metrics, event(batch="batch_of_another_app"), msg_id="wh_b")
    assert reply.status_code == 200 and reply.json()["outcome"] == "not_ours"
    assert client.zscore(keys.inflight("0123456789ab"), bid) == FAR


def gemini_event(kind="batch.succeeded", batch="batches/gem_ours") -> dict:
    """The Gemini API's thin envelope (its webhooks guide, "Webhook envelope")."""
    return {
        "type": kind,
        "version": "v1",
        "timestamp": "2026-01-22T12:00:00Z",
        "data": {"id": batch},
    }


def gem_due(client, keys) -> float:
    return client.zscore(
        keys.inflight(GEM_TAG), client.hget(keys.pbatches("gem"), "batches/gem_ours")
    )


def test_a_verified_gemini_batch_event_makes_its_batch_due_once(setup):
    metrics, client, keys, bid = setup
    reply = post(metrics, gemini_event(), profile="gem", msg_id="gm_1")
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"outcome": "due_now", "batch": "batches/gem_ours"}
    assert gem_due(client, keys) < FAR
    assert client.zscore(keys.inflight("0123456789ab"), bid) == FAR  # the OpenAI one: untouched
    client.zadd(
        keys.inflight(GEM_TAG), {client.hget(keys.pbatches("gem"), "batches/gem_ours"): FAR}
    )
    again = post(metrics, gemini_event(), profile="gem", msg_id="gm_1")  # Gemini retrying
    assert again.json()["outcome"] == "duplicate"
    assert gem_due(client, keys) == FAR
    # The guide's sample shows a bare id: it names the same batch.
    bare = post(metrics, gemini_event(batch="gem_ours"), profile="gem", msg_id="gm_bare")
    assert bare.json()["outcome"] == "due_now"
    for kind in ("batch.failed", "batch.expired", "batch.cancelled"):
        reply = post(metrics, gemini_event(kind), profile="gem", msg_id=f"gm_{kind}")
        assert reply.json()["outcome"] == "due_now"
    # OpenAI's event type and other Gemini events are acknowledged and do nothing.
    for kind in ("batch.completed", "interaction.completed"):
        reply = post(metrics, gemini_event(kind), profile="gem", msg_id=f"gm_x_{kind}")
        assert reply.json()["outcome"] == "ignored"
    reply = post(metrics, gemini_event(batch="batches/other"), profile="gem", msg_id="gm_o")
    assert reply.json()["outcome"] == "not_ours"


@pytest.mark.parametrize("how", ["forged", "300 s old", "duplicate"])
def test_a_forged_old_or_duplicate_gemini_webhook_changes_nothing(setup, how):
    metrics, client, keys, _ = setup
    if how == "duplicate":
        assert post(metrics, gemini_event(), profile="gem", msg_id="gm_d").status_code == 200
        client.zadd(
            keys.inflight(GEM_TAG), {client.hget(keys.pbatches("gem"), "batches/gem_ours"): FAR}
        )
        reply = post(metrics, gemini_event(), profile="gem", msg_id="gm_d")
        assert reply.status_code == 200 and reply.json()["outcome"] == "duplicate"
    else:
        kwargs: dict = {"secret": OTHER} if how == "forged" else {}
        if how == "300 s old":
            kwargs["at"] = datetime.now(UTC) - timedelta(seconds=301)
        reply = post(metrics, gemini_event(), profile="gem", msg_id="gm_d", **kwargs)
        assert reply.status_code == 401, reply.text
    assert gem_due(client, keys) == FAR
    if how != "duplicate":  # a refused call is not remembered: the genuine one still counts
        assert post(metrics, gemini_event(), profile="gem", msg_id="gm_d").json()["outcome"] == (
            "due_now"
        )
