"""A Flask app that hands chat requests to batchrelay and takes the results back by webhook.

Run it against `batchrelay dev` (which prints the BATCHRELAY_* exports this app reads):

    flask --app examples.flask_app run --port 5000
    curl -s localhost:5000/ask -H 'content-type: application/json' -d '{"prompt": "Hi"}'
    curl -s localhost:5000/results/<id>

POST /ask submits through the producer with a `Webhook` callback to this app's own
/webhooks/batchrelay, which verifies the Standard Webhooks signature, dedupes on `webhook-id`
(deliveries are at-least-once) and keeps the result in memory for GET /results/<id>.
Set APP_PUBLIC_URL when the app is reached through a proxy: the worker must be able to call it.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import standardwebhooks
from flask import Flask, abort, jsonify, request

from batchrelay import BatchRelay, BatchRelayError, RelayUnavailableError, Webhook
from batchrelay.config import Settings, load_settings

WEBHOOK_PATH = "/webhooks/batchrelay"


class ResultStore:
    """Results by request id; a webhook-id seen before is acknowledged but not stored again."""

    def __init__(self) -> None:
        self.results: dict[str, dict[str, Any]] = {}
        self.duplicates = 0
        self._lock = threading.Lock()  # the server answers requests in threads

    def add(self, msg_id: str, payload: dict[str, Any]) -> bool:
        with self._lock:
            if msg_id in self.results:
                self.duplicates += 1
                return False
            self.results[msg_id] = payload
            return True


def create_app(settings: Settings | None = None, public_url: str | None = None) -> Flask:
    """`settings` defaults to the BATCHRELAY_* environment; the first webhook secret verifies."""
    settings = settings or load_settings()
    if not settings.webhook_secrets:
        raise RuntimeError("set BATCHRELAY_WEBHOOK_SECRETS (batchrelay dev prints it)")
    verifier = standardwebhooks.Webhook(settings.webhook_secrets[0].get_secret_value())
    public_url = public_url or os.environ.get("APP_PUBLIC_URL")
    relay = BatchRelay(settings)  # thread-safe: one Redis connection pool for the app
    store = ResultStore()

    app = Flask(__name__)
    app.extensions["batchrelay"] = {"relay": relay, "store": store}

    @app.post("/ask")
    def ask() -> Any:
        data = request.get_json(silent=True) or {}
        if not isinstance(data.get("prompt"), str):
            abort(422, "JSON body needs a 'prompt' string")
        base = (public_url or request.url_root).rstrip("/")
        try:
            rid = relay.submit(
                "/v1/chat/completions",
                {
                    "model": data.get("model", "gpt-4o-mini"),
                    "messages": [{"role": "user", "content": data["prompt"]}],
                },
                callback=Webhook(base + WEBHOOK_PATH),
            )
        except RelayUnavailableError as exc:  # Redis down: the client may retry later
            abort(503, str(exc))
        except BatchRelayError as exc:  # rejected at the door: say why
            abort(422, str(exc))
        return jsonify(id=rid, result_url=f"{base}/results/{rid}"), 202

    @app.post(WEBHOOK_PATH)
    def webhook() -> Any:
        try:
            payload = verifier.verify(request.get_data(), dict(request.headers))
        except (standardwebhooks.WebhookVerificationError, ValueError):  # ValueError: malformed
            abort(400, "bad signature")
        store.add(request.headers["webhook-id"], payload)
        return "", 204  # 2xx, also for a duplicate: no redelivery

    @app.get("/results/<request_id>")
    def result(request_id: str) -> Any:
        payload = store.results.get(request_id)
        if payload is None:
            return jsonify(id=request_id, status="waiting"), 202
        answer = None
        if payload["status"] == "succeeded":
            answer = payload["response"]["body"]["choices"][0]["message"]["content"]
        return jsonify(id=request_id, status=payload["status"], answer=answer, raw=payload)

    return app
