"""Malformed provider output is logged and nothing is lost: an unparseable line, an unknown
custom_id, a truncated file and a 200 with an HTML body, for both wire shapes. Requests whose
result could not be read go back to pending and succeed in a later batch."""

from __future__ import annotations

import pytest

from batchrelay import BatchRelay
from batchrelay.emulator import start_emulator
from batchrelay.worker.context import Relay
from tests.relay.harness import CHAT, all_final, chat, drive, fast_emulator_config, relay_settings

KINDS = ["unparseable_line", "unknown_custom_id", "truncated", "html"]
# What the WARNING/ERROR log says for each kind.
LOGGED = {
    "unparseable_line": "unreadable result line skipped",
    "unknown_custom_id": "result line for unknown custom_id",
    "truncated": "unreadable result line skipped",
    "html": "unreadable result line skipped",
}


@pytest.mark.parametrize("shape", ["openai", "anthropic"])
@pytest.mark.parametrize("kind", KINDS)
def test_malformed_output_loses_nothing(redis_url, caplog, kind, shape):
    with start_emulator(fast_emulator_config()) as emu:
        if shape == "openai":
            settings = relay_settings(redis_url, emu)
            endpoint, model = CHAT, "gpt-4o-mini"
        else:
            profile = {
                "name": "claude",
                "kind": "anthropic",
                "base_url": emu.anthropic_base_url,
                "models": ["claude-*"],
            }
            settings = relay_settings(redis_url, emu, profile=profile)
            endpoint, model = "/v1/messages", "claude-sonnet-4-5"
        producer, worker = BatchRelay(settings), Relay(settings)
        emu.set_faults(malformed_output_next=1, malformed_output_kind=kind)
        items = []
        for i in range(30):
            body = chat(f"m{i}", model)
            if shape == "anthropic":
                body["max_tokens"] = 64
            items.append({"endpoint": endpoint, "body": body})
        ids = producer.submit_many(items)
        texts = {rid: f"m{i}" for i, rid in enumerate(ids)}
        with caplog.at_level("WARNING"):
            drive(worker, all_final(producer, ids), timeout=60)
        results = [producer.result(rid) for rid in ids]
        assert all(r["status"] == "succeeded" for r in results), results
        for rid, r in zip(ids, results, strict=True):
            body = r["response"]["body"]
            text = (
                body["choices"][0]["message"]["content"]
                if shape == "openai"
                else body["content"][0]["text"]
            )
            assert text == f"echo: {texts[rid]}"
        attempts = [r["attempts"] for r in results]
        if kind == "unknown_custom_id":
            assert set(attempts) == {1}  # the stray line is ignored, nothing re-sent
        else:
            assert max(attempts) == 2  # what could not be read was re-pooled and re-sent
        logged = " ".join(r.getMessage() for r in caplog.records if r.levelname != "INFO")
        assert LOGGED[kind] in logged, logged[:2000]
        producer.close()
        worker.close()
