"""A worker process's asyncio engine: one event loop in a thread, kept for the process.

A thread per attempt (httpx, and a hand-written client after it) spent its time on the GIL
and per-request set-up and reached 0.2 x a plain aiohttp client (bench_webhooks). One loop
running every attempt as a coroutine over one aiohttp session costs about what that plain
client does per request and keeps connections alive across chunks. The loop
lives in its own thread so that the synchronous callers (Celery tasks, tests) hand it a
coroutine and wait; several callers at once share the loop and the window of attempts.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

from batchrelay.config import Settings
from batchrelay.producer.callbacks import WebhookPolicy
from batchrelay.worker.webhook_client import WebhookClient
from batchrelay.worker.webhook_signing import WebhookSigner

T = TypeVar("T")


class Engine:
    """The loop, the webhook client, the signer and the window of attempts in flight."""

    def __init__(self, settings: Settings):
        self.settings = settings
        secrets = settings.webhook_secrets
        # No secret: webhook attempts fail with a clear error (see senders/webhook.py).
        self.signer = WebhookSigner(secrets) if secrets else None
        # uvloop: the loop's own per-request work (callbacks, socket writes) costs less.
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="batchrelay-delivery", daemon=True
        )
        self._thread.start()
        self.window, self.webhooks = self.run(self._open())

    async def _open(self) -> tuple[asyncio.Semaphore, WebhookClient]:
        window = self.settings.delivery_concurrency
        policy = WebhookPolicy.from_settings(self.settings)
        return asyncio.Semaphore(window), await WebhookClient.open(policy, max_connections=window)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the engine's loop and wait for its result (from any other thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        if not self.loop.is_running():
            return
        self.run(self.webhooks.close())
        self.run(self.loop.shutdown_default_executor())  # the threads Redis calls ran in
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
