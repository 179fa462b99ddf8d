"""OpenAI-style vendors as profile fields (`kind = "openai"`, `vendor = ...`), end to end
against the emulator in each vendor's flavor: Groq with a 7-day completion window, and
Together with its own upload path and purpose, lines without method/url, `{job, warning}`
create answers, upper-case statuses and no metadata (a lost create reply is adopted by its
input file)."""

from __future__ import annotations

import re
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from batchrelay.config import ConfigurationError, load_settings
from batchrelay.emulator import EmulatorHandle, start_emulator
from batchrelay.worker.providers import ProviderError
from tests.providers.helpers import Scenario, chat_text
from tests.relay.harness import CHAT, chat, drive, fast_emulator_config

MODEL = "llama-3.1-8b-instant"
NEW = {"mistral", "groq", "together"}


def run(relays, receiver, emu: EmulatorHandle, vendor: dict[str, Any], n: int = 30) -> Scenario:
    profile = {"api_key": emu.api_key, "models": [MODEL], **vendor}
    producer, worker = relays(emu, [profile], delete_provider_files=False)
    body = lambda text: chat(text, MODEL)  # noqa: E731
    return Scenario(producer, worker, emu, receiver, endpoint=CHAT, body=body, reply=chat_text, n=n)


@pytest.fixture
def emu():
    with start_emulator(fast_emulator_config(models=[MODEL], auth_headers=["bearer"])) as handle:
        yield handle


def test_groq_with_a_seven_day_window(relays, receiver, emu):
    groq = {"name": "groq", "vendor": "groq", "base_url": emu.groq_base_url}
    scenario = run(relays, receiver, emu, {**groq, "completion_window": "7d"})
    scenario.all(final_status=400, final_code="invalid_request_error", retry_status=503)
    batches = emu.engine.store.list_batches("openai")
    assert batches and all(b.flavor == "groq" and b.completion_window == "7d" for b in batches)
    assert all(b.metadata and b.metadata["batchrelay_batch"] for b in batches)


def test_together_uploads_lines_and_batches_in_its_own_shapes(relays, receiver, emu):
    together = {"name": "together", "vendor": "together", "base_url": emu.together_base_url}
    scenario = run(relays, receiver, emu, together)
    scenario.all(final_status=400, final_code="invalid_request_error", retry_status=503)
    batches = emu.engine.store.list_batches("openai")
    assert batches and all(b.flavor == "together" and b.metadata is None for b in batches)
    # The Together flavor refuses an upload without `file_name` or with another purpose.
    uploads = [f for f in emu.engine.store.list_files() if f.purpose == "batch-api"]
    assert len(uploads) == len(batches)
    first = emu.engine.store.blob_path(uploads[0].id).read_bytes().splitlines()[0]
    assert first.startswith(b'{"custom_id":"r_') and b'"method"' not in first


def test_together_adopts_a_batch_whose_create_reply_was_lost(relays, receiver, emu):
    together = {"name": "together", "vendor": "together", "base_url": emu.together_base_url}
    scenario = run(relays, receiver, emu, together, n=10)
    emu.set_faults(lost_reply_next=1, lost_reply_match="POST */batches")
    sent = scenario.submit("lost")
    drive(scenario.worker, lambda: set(sent) <= receiver.ok_ids(), swallow=(ProviderError,))
    assert emu.stats()["replies_lost"] == 1
    got = scenario.deliver(sent)
    assert all(p["status"] == "succeeded" and p["attempts"] == 1 for p in got.values())
    assert emu.stats()["batches_created"]["together"] == 1


def test_vendor_fields_are_checked_at_start_up():
    base = {"name": "v", "base_url": "https://api.example/v1", "api_key": "k"}
    groq = load_settings(providers=[{**base, "vendor": "groq", "completion_window": "3d"}])
    assert groq.providers[0].completion_window_s == 3 * 86_400
    assert groq.providers[0].endpoints == [CHAT]
    assert groq.providers[0].max_bytes_per_batch == 100 * 1024 * 1024
    for bad, message in [
        ({"vendor": "groq", "completion_window": "8d"}, "must be one of"),
        ({"completion_window": "7d"}, "must be one of \\['24h'\\]"),
        ({"vendor": "together", "endpoints": ["/v1/embeddings"]}, "for vendor 'together'"),
        ({"vendor": "groq", "kind": "azure"}, "does not apply to kind 'azure'"),
        ({"vendor": "fireworks"}, "vendor"),
    ]:
        with pytest.raises(ConfigurationError, match=message):
            load_settings(providers=[{**base, **bad}])


def test_the_readme_and_docs_examples_load():
    """The Mistral, Groq and Together `[[providers]]` TOML examples in README.md and
    docs/providers.md are valid profiles."""
    root = Path(__file__).resolve().parents[2]
    blocks = [
        block
        for doc in ("README.md", "docs/providers.md")
        for block in re.findall(r"```toml\n(.*?)```", (root / doc).read_text(), re.S)
        if "[[providers]]" in block
    ]
    profiles = [p for block in blocks for p in tomllib.loads(block)["providers"]]
    new = [p for p in profiles if (p.get("vendor") or p.get("kind")) in NEW]
    assert Counter(p.get("vendor") or p["kind"] for p in new) == Counter(
        {"mistral": 2, "groq": 2, "together": 2}
    )
    for profile in new:
        load_settings(providers=[profile])
