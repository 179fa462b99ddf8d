"""A FastAPI app that hands chat requests to batchrelay and takes the results back by webhook.

Run it against `batchrelay dev` (which prints the BATCHRELAY_* exports this app reads):

    uvicorn examples.fastapi_app:create_app --factory --port 8000
    curl -s localhost:8000/ask -H 'content-type: application/json' -d '{"prompt": "Hi"}'
    curl -s localhost:8000/results/<id>

POST /ask submits through the producer with a `Webhook` callback to this app's own
/webhooks/batchrelay, which verifies the Standard Webhooks signature, dedupes on `webhook-id`
(deliveries are at-least-once) and keeps the result in memory for GET /results/{id}.
Set APP_PUBLIC_URL when the app is reached through a proxy: the worker must be able to call it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import standardwebhooks
from fastapi import FastAPI, HTTPException, Request, Response
from pydantic import BaseModel

from batchrelay import AsyncBatchRelay, BatchRelayError, RelayUnavailableError, Webhook
from batchrelay.config import Settings, load_settings

WEBHOOK_PATH = "/webhooks/batchrelay"


class Ask(BaseModel):
    prompt: str
    model: str = "gpt-4o-mini"


class ResultStore:
    """Results by request id; a webhook-id seen before is acknowledged but not stored again."""

    def __init__(self) -> None:
        self.results: dict[str, dict[str, Any]] = {}
        self.duplicates = 0
        self._lock = asyncio.Lock()

    async def add(self, msg_id: str, payload: dict[str, Any]) -> bool:
        async with self._lock:
            if msg_id in self.results:
                self.duplicates += 1
                return False
            self.results[msg_id] = payload
            return True


def create_app(settings: Settings | None = None, public_url: str | None = None) -> FastAPI:
    """`settings` defaults to the BATCHRELAY_* environment; the first webhook secret verifies."""
    settings = settings or load_settings()
    if not settings.webhook_secrets:
        raise RuntimeError("set BATCHRELAY_WEBHOOK_SECRETS (batchrelay dev prints it)")
    verifier = standardwebhooks.Webhook(settings.webhook_secrets[0].get_secret_value())
    public_url = public_url or os.environ.get("APP_PUBLIC_URL")
    relay = AsyncBatchRelay(settings)
    store = ResultStore()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await relay.aclose()

    app = FastAPI(title="batchrelay FastAPI example", lifespan=lifespan)
    app.state.store = store

    @app.post("/ask", status_code=202)
    async def ask(ask: Ask, request: Request) -> dict[str, str]:
        base = (public_url or str(request.base_url)).rstrip("/")
        try:
            rid = await relay.submit(
                "/v1/chat/completions",
                {"model": ask.model, "messages": [{"role": "user", "content": ask.prompt}]},
                callback=Webhook(base + WEBHOOK_PATH),
            )
        except RelayUnavailableError as exc:  # Redis down: the client may retry later
            raise HTTPException(503, str(exc)) from None
        except BatchRelayError as exc:  # rejected at the door: say why
            raise HTTPException(422, str(exc)) from None
        return {"id": rid, "result_url": f"{base}/results/{rid}"}

    @app.post(WEBHOOK_PATH, status_code=204)
    async def webhook(request: Request) -> Response:
        body = await request.body()
        try:
            payload = verifier.verify(body, dict(request.headers))
        except (standardwebhooks.WebhookVerificationError, ValueError):  # ValueError: malformed
            raise HTTPException(400, "bad signature") from None
        await store.add(request.headers["webhook-id"], payload)
        return Response(status_code=204)  # 2xx, also for a duplicate: no redelivery

    @app.get("/results/{request_id}")
    async def result(request_id: str, response: Response) -> dict[str, Any]:
        payload = store.results.get(request_id)
        if payload is None:
            response.status_code = 202
            return {"id": request_id, "status": "waiting"}
        answer = None
        if payload["status"] == "succeeded":
            answer = payload["response"]["body"]["choices"][0]["message"]["content"]
        return {"id": request_id, "status": payload["status"], "answer": answer, "raw": payload}

    return app
