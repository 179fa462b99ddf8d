"""The bad-input matrix: every row is refused with a specific error and stores nothing, through
both `submit()` and `submit_many()`. README.md carries the same table (checked below)."""

from __future__ import annotations

from pathlib import Path

import pytest

from producer import (
    BatchRelay,
    IdempotencyConflictError,
    InvalidCallbackError,
    InvalidMetadataError,
    InvalidRequestError,
    MissingModelError,
    RequestTooLargeError,
    StreamingNotSupportedError,
    UnknownEndpointError,
    UnknownModelError,
    Webhook,
)
from tests.relay.harness import CHAT, chat, relay_settings

OK = chat("fine")

# (README wording, endpoint, body, keyword arguments, exception, words the message contains)
MATRIX = [
    ("unknown endpoint", "/v1/images/nope", OK, {}, UnknownEndpointError, "not served"),
    ("missing model", CHAT, {"messages": []}, {}, MissingModelError, "no 'model'"),
    ("model not a string", CHAT, {"model": 4}, {}, MissingModelError, "must be a string"),
    ("unknown model", CHAT, chat("x", "llama-3"), {}, UnknownModelError, "matches no provider"),
    ("body not a JSON object", CHAT, ["x"], {}, InvalidRequestError, "JSON object"),
    ("body not JSON-serialisable", CHAT, {**OK, "x": {1, 2}}, {}, InvalidRequestError, "JSON"),
    ("body over the line limit", CHAT, chat("x" * 3000), {}, RequestTooLargeError, "max_line_bytes"),
    ("`stream: true`", CHAT, {**OK, "stream": True}, {}, StreamingNotSupportedError, "stream"),
    ("non-JSON metadata", CHAT, OK, {"metadata": {"k": b"\x00"}}, InvalidMetadataError, "JSON"),
    ("metadata not an object", CHAT, OK, {"metadata": "tag"}, InvalidMetadataError, "object"),
    ("oversized metadata", CHAT, OK, {"metadata": {"k": "v" * 17_000}}, InvalidMetadataError, "limit"),
    ("callback that is a bare string", CHAT, OK, {"callback": "http://a.example/"}, InvalidCallbackError, "Webhook(url)"),
    ("callback with a non-HTTP scheme", CHAT, OK, {"callback": Webhook("ftp://a.example/x")}, InvalidCallbackError, "scheme"),
    ("callback with credentials in the URL", CHAT, OK, {"callback": Webhook("https://u:p@a.example/")}, InvalidCallbackError, "credentials"),
    ("callback to a loopback address", CHAT, OK, {"callback": Webhook("http://127.0.0.2/x")}, InvalidCallbackError, "loopback"),
    ("callback to a name that resolves to loopback", CHAT, OK, {"callback": Webhook("http://localhost/x")}, InvalidCallbackError, "loopback"),
    ("callback to a private address", CHAT, OK, {"callback": Webhook("http://192.168.1.5/x")}, InvalidCallbackError, "private"),
    ("callback to a link-local address", CHAT, OK, {"callback": Webhook("http://169.254.169.254/")}, InvalidCallbackError, "link-local"),
    ("callback host that does not resolve", CHAT, OK, {"callback": Webhook("https://nowhere.invalid/")}, InvalidCallbackError, "resolve"),
    ("idempotency key that is empty", CHAT, OK, {"idempotency_key": ""}, InvalidRequestError, "idempotency_key"),
]  # fmt: skip


@pytest.fixture
def relay(redis_url):
    emu = type("Emu", (), {"openai_base_url": "http://127.0.0.1:9/v1", "api_key": "sk-x"})
    settings = relay_settings(redis_url, emu, profile={"max_line_bytes": 2048})
    settings = settings.model_copy(update={"webhook_allow_hosts": ["127.0.0.9"]})
    with BatchRelay(settings) as r:
        yield r


@pytest.mark.parametrize(("what", "endpoint", "body", "kw", "exc", "words"), MATRIX)
def test_submit_refuses(relay, what, endpoint, body, kw, exc, words):
    with pytest.raises(exc) as info:
        relay.submit(endpoint, body, **kw)
    assert words in str(info.value), f"{what}: {info.value}"
    assert relay.redis.dbsize() == 0


@pytest.mark.parametrize(("what", "endpoint", "body", "kw", "exc", "words"), MATRIX)
def test_submit_many_refuses_the_whole_call(relay, what, endpoint, body, kw, exc, words):
    good = {"endpoint": CHAT, "body": chat("ok")}
    with pytest.raises(exc) as info:
        relay.submit_many([good, good, {"endpoint": endpoint, "body": body, **kw}])
    assert str(info.value).startswith("item 2: ") and words in str(info.value)
    assert relay.redis.dbsize() == 0


def test_idempotency_key_reused_with_another_body(relay):
    rid = relay.submit(CHAT, chat("a"), idempotency_key="k")
    before = relay.redis.dbsize()
    with pytest.raises(IdempotencyConflictError, match=rid):
        relay.submit(CHAT, chat("b"), idempotency_key="k")
    with pytest.raises(IdempotencyConflictError):
        relay.submit_many(
            [
                {"endpoint": CHAT, "body": chat("c"), "idempotency_key": "fresh"},
                {"endpoint": CHAT, "body": chat("b"), "idempotency_key": "k"},
            ]
        )
    assert relay.redis.dbsize() == before  # "fresh" was taken, then given back
    other = relay.submit(CHAT, chat("d"), idempotency_key="fresh")
    assert relay.status(other).state == "pending"


def test_allow_list_permits_what_it_names(relay):
    assert relay.submit(CHAT, OK, callback=Webhook("http://127.0.0.9:9/hook"))


def test_readme_carries_the_same_table():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for what, *_ in MATRIX:
        assert f"| {what} |" in readme, what
    assert "| idempotency key reused with another body |" in readme


def test_callback_is_checked_again_at_delivery(redis_url):
    """Allowed when submitted, refused when delivered (the allow-list changed): never sent."""
    from emulator import start_emulator
    from tests._receiver import WebhookReceiver
    from tests.relay.harness import drive, fast_emulator_config
    from worker.context import Relay

    with start_emulator(fast_emulator_config()) as emu, WebhookReceiver() as receiver:
        allowed = relay_settings(redis_url, emu)
        producer = BatchRelay(allowed)
        rid = producer.submit(CHAT, chat("x"), callback=Webhook(receiver.url))
        strict = allowed.model_copy(update={"webhook_allow_hosts": []})
        worker = Relay(strict)
        drive(worker, lambda: producer.status(rid).delivery == "dead")
        status = producer.status(rid)
        assert status.state == "succeeded" and "blocked" in (status.last_delivery_error or "")
        assert receiver.received == []
        producer.close()
        worker.close()
