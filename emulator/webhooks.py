"""Batch event webhooks sent by the emulator, as OpenAI's project webhook and the Gemini API's
static webhook would.

When an OpenAI-shaped batch turns terminal, one event is posted to the configured URL:
`{"object": "event", "id": "evt_…", "type": "batch.completed|failed|expired|cancelled",
"created_at": <unix s>, "data": {"id": "<batch id>"}}`. A Gemini batch sends the Gemini API's
thin envelope instead: `{"type": "batch.succeeded|failed|expired|cancelled", "version": "v1",
"timestamp": "<RFC 3339>", "data": {"id": "batches/<id>", …}}` (a failed one adds
`error_code` and `error_message`). Both carry Standard Webhooks headers (`webhook-id`,
`webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`), signed with the configured
`whsec_` secret. A refused or failed post is retried a few times with backoff, with the same
`webhook-id`, on a thread of its own, so a slow receiver never holds up the emulator's batch
jobs. The target is set at start (`BATCHRELAY_EMULATOR_WEBHOOK_URL` / `..._WEBHOOK_SECRET`) or
at run time with `PUT /_emulator/webhook {"url": ..., "secret": ...}` (`{"url": null}`: off).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import queue
import secrets
import threading
import time

import httpx
import orjson
from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError, field_validator

from batchrelay.emulator.errors import bad_request
from batchrelay.emulator.guards import admin_guard
from batchrelay.emulator.wire import json_response, read_json_object

log = logging.getLogger(__name__)

ATTEMPTS = 5
FIRST_RETRY_S = 0.5
TIMEOUT_S = 10.0
# Our (OpenAI) terminal status -> the Gemini API's event type.
GEMINI_EVENTS = {
    "completed": "batch.succeeded",
    "failed": "batch.failed",
    "expired": "batch.expired",
    "cancelled": "batch.cancelled",
}


class WebhookTarget(BaseModel):
    """Where batch events go, and the secret they are signed with."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = None
    secret: SecretStr | None = None

    @field_validator("secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            raw = value.get_secret_value()
            if not raw.startswith("whsec_"):
                raise ValueError("the webhook secret must start with 'whsec_'")
            base64.b64decode(raw.removeprefix("whsec_"), validate=True)
        return value

    def ready(self) -> bool:
        return bool(self.url) and self.secret is not None


def batch_event(shape: str, batch_id: str, status: str, now: float) -> tuple[dict, str]:
    """The event body for a batch of `shape` that turned `status`, and its user agent."""
    if shape == "gemini":
        data: dict = {"id": f"batches/{batch_id}"}
        if status == "failed":
            data |= {"error_code": 3, "error_message": "The batch failed."}
        event = {
            "type": GEMINI_EVENTS[status],
            "version": "v1",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "data": data,
        }
        return event, "Google-Gemini-Webhooks (batchrelay emulator)"
    event = {
        "object": "event",
        "id": "evt_" + secrets.token_hex(12),
        "type": f"batch.{status}",
        "created_at": int(now),
        "data": {"id": batch_id},
    }
    return event, "OpenAI/1.0 (+https://platform.openai.com/docs/webhooks)"


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks signature header value for one message."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


class BatchWebhooks:
    """Posts batch events from a queue, one at a time, in the order batches ended."""

    def __init__(self, target: WebhookTarget) -> None:
        self.target = target
        self.sent = 0
        self.failed = 0
        self._queue: queue.Queue[tuple[str, str, str] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="emulator-webhooks", daemon=True)
        self._thread.start()

    def configure(self, target: WebhookTarget) -> None:
        self.target = target

    def notify(self, batch_id: str, status: str, shape: str = "openai") -> None:
        """Queue the event for a batch of `shape` (openai or gemini) that just turned
        `status` (terminal)."""
        if self.target.ready():
            self._queue.put((batch_id, status, shape))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(5)

    def _run(self) -> None:
        with httpx.Client(timeout=TIMEOUT_S, follow_redirects=False) as client:
            while (item := self._queue.get()) is not None:
                self._post(client, *item)

    def _post(self, client: httpx.Client, batch_id: str, status: str, shape: str) -> None:
        target = self.target
        if not target.ready():
            return
        event, agent = batch_event(shape, batch_id, status, time.time())
        body, msg_id = orjson.dumps(event), "wh_" + secrets.token_hex(12)
        for attempt in range(ATTEMPTS):
            now = int(time.time())
            headers = {
                "content-type": "application/json",
                "user-agent": agent,
                "webhook-id": msg_id,
                "webhook-timestamp": str(now),
                "webhook-signature": sign(target.secret.get_secret_value(), msg_id, now, body),
            }
            try:
                if client.post(target.url, content=body, headers=headers).status_code < 300:
                    self.sent += 1
                    return
            except httpx.HTTPError as exc:
                log.info("batch webhook for %s not delivered: %s", batch_id, exc)
            time.sleep(FIRST_RETRY_S * 2**attempt)
        self.failed += 1
        log.warning("batch webhook for %s given up after %d attempts", batch_id, ATTEMPTS)


def webhook_router() -> APIRouter:
    """`GET|PUT /_emulator/webhook`: where batch events go (admin, API key required)."""
    router = APIRouter(prefix="/_emulator", dependencies=[Depends(admin_guard)])

    def describe(hooks: BatchWebhooks) -> Response:
        t = hooks.target
        return json_response(
            {
                "url": t.url,
                "secret_set": t.secret is not None,
                "sent": hooks.sent,
                "failed": hooks.failed,
            }
        )

    @router.get("/webhook")
    def get_webhook(request: Request) -> Response:
        return describe(request.app.state.engine.webhooks)

    @router.put("/webhook")
    async def put_webhook(request: Request) -> Response:
        try:
            target = WebhookTarget.model_validate(await read_json_object(request, "openai"))
        except ValidationError as exc:
            raise bad_request("openai", str(exc)) from None
        hooks: BatchWebhooks = request.app.state.engine.webhooks
        hooks.configure(target)
        return describe(hooks)

    return router
