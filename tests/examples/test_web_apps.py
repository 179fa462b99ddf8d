"""Each example app against the embedded stack: a request submitted over HTTP comes back as a
real, signed webhook to the app's own endpoint, which verifies it, dedupes it and shows it."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
import standardwebhooks

from batchrelay.config.urls import RedisUrl
from batchrelay.stack import EmbeddedStack
from tests.examples.servers import serve_asgi, serve_werkzeug, serve_wsgi

WEBHOOK = "/webhooks/batchrelay"


def wait_result(client: httpx.Client, url: str, stack: EmbeddedStack, timeout: float = 45):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(url)
        if response.status_code == 200:
            return response.json()
        assert response.status_code == 202, response.text
        stack.check()
        time.sleep(0.2)
    raise AssertionError(f"no webhook for {url} after {timeout} s\n{stack.logs()}")


def signed(secret: str, msg_id: str, body: bytes) -> dict[str, str]:
    now = datetime.now(UTC)
    signature = standardwebhooks.Webhook(secret).sign(msg_id, now, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


def exercise(base: str, store: Any, stack: EmbeddedStack) -> None:
    with httpx.Client(base_url=base, timeout=10) as client:
        prompts = {"Hello from the example": "gpt-4o-mini", "Second question": "gpt-4.1-nano"}
        ids = {}
        for prompt, model in prompts.items():
            answer = client.post("/ask", json={"prompt": prompt, "model": model})
            assert answer.status_code == 202, answer.text
            ids[prompt] = answer.json()["id"]
        for prompt, rid in ids.items():
            shown = wait_result(client, f"/results/{rid}", stack)
            assert shown["status"] == "succeeded", shown
            assert shown["answer"] == f"echo: {prompt}"
            assert shown["raw"]["id"] == rid and shown["raw"]["model"] == prompts[prompt]
        assert set(store.results) == set(ids.values())
        assert store.duplicates == 0

        # At-least-once: the same webhook-id again is acknowledged, not stored twice.
        rid = ids["Hello from the example"]
        first = store.results[rid]
        body = orjson.dumps({**first, "status": "failed"})
        again = client.post(WEBHOOK, content=body, headers=signed(stack.secret, rid, body))
        assert again.status_code == 204
        assert store.duplicates == 1 and store.results[rid] == first

        # A delivery not signed with the secret is refused and not stored.
        forged = signed("whsec_" + "QUJD" * 8, "forged", body)
        assert client.post(WEBHOOK, content=body, headers=forged).status_code == 400
        unsigned = {"webhook-id": "x", "content-type": "application/json"}
        assert client.post(WEBHOOK, content=body, headers=unsigned).status_code == 400
        assert "forged" not in store.results and "x" not in store.results

        # Rejected at the door, with the reason.
        bad = client.post("/ask", json={"prompt": "hi", "model": ""})
        assert bad.status_code == 422


def test_fastapi_example(stack: EmbeddedStack) -> None:
    from examples.fastapi_app import create_app

    app = create_app(stack.settings)
    with serve_asgi(app) as base:
        exercise(base, app.state.store, stack)


def test_flask_example(stack: EmbeddedStack) -> None:
    from examples.flask_app import create_app

    app = create_app(stack.settings)
    with serve_werkzeug(app) as base:
        exercise(base, app.extensions["batchrelay"]["store"], stack)


def test_django_example(stack: EmbeddedStack) -> None:
    from examples.django_app import STATE, create_app

    app = create_app(stack.settings)
    with serve_wsgi(app) as base:
        exercise(base, STATE.store, stack)


@pytest.mark.parametrize("module", ["fastapi_app", "flask_app", "django_app"])
def test_examples_need_a_webhook_secret(module: str, stack: EmbeddedStack) -> None:
    import importlib

    from batchrelay.config import load_settings

    example = importlib.import_module(f"examples.{module}")
    settings = load_settings(redis_url=stack.redis_url, webhook_secrets=[])
    with pytest.raises(RuntimeError, match="BATCHRELAY_WEBHOOK_SECRETS"):
        example.create_app(settings)


SERVERS = {"fastapi_app": serve_asgi, "flask_app": serve_werkzeug, "django_app": serve_wsgi}


@pytest.mark.parametrize("module", list(SERVERS))
def test_examples_answer_503_when_redis_is_down(module: str, stack: EmbeddedStack) -> None:
    """Redis unreachable is the relay's trouble, not the caller's: 503, password masked."""
    import importlib

    from tests._redis import free_port

    port = free_port()
    down = stack.settings.model_copy(
        update={"redis_url": RedisUrl(f"redis://:pw-123@127.0.0.1:{port}/0")}
    )
    app = importlib.import_module(f"examples.{module}").create_app(down)
    with SERVERS[module](app) as base, httpx.Client(base_url=base, timeout=10) as client:
        answer = client.post("/ask", json={"prompt": "hi"})
    assert answer.status_code == 503, answer.text
    assert f"redis://:***@127.0.0.1:{port}/0" in answer.text and "pw-123" not in answer.text
