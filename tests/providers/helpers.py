"""Shared pieces of the provider tests: settings for a list of profiles, and one scenario that
puts a provider kind through succeeded, errored (final and retried), expired and cancelled
results, checked where an app sees them: webhooks and `result()`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from batchrelay import BatchRelay, Webhook
from batchrelay.config import Settings
from batchrelay.worker.context import Relay
from batchrelay.worker.packing import aggregate
from batchrelay.worker.submission import submit_batch
from tests.relay.harness import SECRET, drive, relay_settings

Body = Callable[[str], dict[str, Any]]
Reply = Callable[[dict[str, Any]], str]


def settings_for(redis_url: str, emu: Any, providers: list[dict], **overrides: Any) -> Settings:
    return relay_settings(redis_url, emu, providers=providers, **overrides)


def messages(text: str, model: str = "claude-haiku-4-5") -> dict[str, Any]:
    return {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": text}]}


def message_text(body: dict[str, Any]) -> str:
    return body["content"][0]["text"]


def chat_text(body: dict[str, Any]) -> str:
    return body["choices"][0]["message"]["content"]


def payloads(receiver: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The last webhook body received per request id (all verified against the secret)."""
    assert receiver.verify_all(SECRET) >= len(ids)
    got = receiver.by_id()
    return {rid: orjson.loads(got[rid][-1].body) for rid in ids}


class Scenario:
    """Drives one profile's requests through the relay inline and checks what apps get."""

    def __init__(
        self,
        producer: BatchRelay,
        worker: Relay,
        emu: Any,
        receiver: Any,
        *,
        endpoint: str,
        body: Body,
        reply: Reply,
        n: int = 30,
    ):
        self.producer, self.worker, self.emu, self.receiver = producer, worker, emu, receiver
        self.endpoint, self.body, self.reply, self.n = endpoint, body, reply, n
        self.hook = Webhook(receiver.url + "/hook")

    def submit(self, tag: str) -> dict[str, str]:
        texts = [f"{tag} {i}" for i in range(self.n)]
        items = [
            {"endpoint": self.endpoint, "body": self.body(t), "callback": self.hook} for t in texts
        ]
        return dict(zip(self.producer.submit_many(items), texts, strict=True))

    def deliver(self, sent: dict[str, str], timeout: float = 30) -> dict[str, dict[str, Any]]:
        ok = self.receiver.ok_ids
        drive(self.worker, lambda: set(sent) <= ok(), timeout=timeout)
        got = payloads(self.receiver, list(sent))
        for rid, payload in got.items():
            assert payload["id"] == rid and payload["endpoint"] == self.endpoint
            assert payload == self.producer.result(rid, timeout=1)
            if payload["status"] == "succeeded":
                assert self.reply(payload["response"]["body"]) == f"echo: {sent[rid]}"
                assert payload["response"]["status_code"] == 200
        return got

    def succeeded_after(self, sent: dict[str, str], code: str | int) -> int:
        """Every request succeeded; returns how many needed a second attempt, checking each
        of those carries the first attempt's error (an error code or an HTTP status)."""
        got = self.deliver(sent)
        states = {rid: (p["status"], p["attempts"], p["error"]) for rid, p in got.items()}
        assert all(p["status"] == "succeeded" for p in got.values()), states
        again = [rid for rid, p in got.items() if p["attempts"] > 1]
        for rid in again:
            last = self.producer.status(rid).last_error
            assert code in (last["code"], last["status_code"]), last
        return len(again)

    def errored(self, final_status: int, final_code: str, retry_status: int) -> None:
        self.emu.set_faults(request_error_fraction=0.3, request_error_status=final_status)
        got = self.deliver(self.submit("final"))
        failed = [p for p in got.values() if p["status"] == "failed"]
        assert 0 < len(failed) < self.n
        for p in failed:
            assert p["response"] is None and p["attempts"] == 1
            assert (p["error"]["status_code"], p["error"]["code"]) == (final_status, final_code)
            assert p["error"]["message"]
        self.emu.set_faults(request_error_fraction=0.3, request_error_status=retry_status)
        assert self.succeeded_after(self.submit("retried"), retry_status) > 0
        self.emu.reset_faults()

    def expired(self) -> None:
        self.emu.set_faults(expire_next=1, expire_after_fraction=0.5)
        assert self.succeeded_after(self.submit("expired"), "batch_expired") >= self.n // 3
        self.emu.reset_faults()

    def cancelled(self) -> None:
        """A batch cancelled at the provider mid-run: what ran is delivered, the rest is sent
        again in a new batch."""
        self.emu.set_timings(processing_rate_rps=5)
        sent = self.submit("cancelled")
        [bid] = aggregate(self.worker, now=self.worker.now() + 60_000)
        assert submit_batch(self.worker, bid) == "submitted"
        self.emu.reset(data=False)  # start timings again for the batch that follows
        time.sleep(0.3)
        rec = self.worker.batch(bid)
        self.worker.adapter(rec["profile"]).cancel(rec["pbatch"])
        assert self.succeeded_after(sent, "batch_cancelled") > 0

    def all(self, final_status: int, final_code: str, retry_status: int) -> None:
        got = self.deliver(self.submit("plain"))
        assert all(p["status"] == "succeeded" and p["attempts"] == 1 for p in got.values())
        self.errored(final_status, final_code, retry_status)
        self.expired()
        self.cancelled()
