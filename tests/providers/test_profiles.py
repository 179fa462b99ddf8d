"""Provider profile settings: defaults per kind, settings refused where they make no sense
(each error names the setting), fallbacks, and token estimates (a ratio, a tokenizer
function, or tiktoken when installed)."""

from __future__ import annotations

import importlib.machinery
import math
import sys
import types
from typing import get_args

import pytest

from batchrelay.config import ConfigurationError, load_settings
from batchrelay.config.kinds import KINDS
from batchrelay.config.settings import Kind
from batchrelay.config.tokens import tokenizer
from batchrelay.emulator import start_emulator
from batchrelay.producer import errors
from batchrelay.worker.packing import aggregate, iter_items
from batchrelay.worker.providers import ADAPTERS
from batchrelay.worker.providers.http import auth_headers
from batchrelay.worker.submission import submit_batch
from tests.relay.harness import CHAT, chat, fast_emulator_config

KEY = "sk-secret-key"


def count_words(text: str) -> int:
    """A tokenizer for the tests: one token per word."""
    return len(text.split())


def one(**extra) -> dict:
    return {"name": "p", "base_url": "https://api.example.com/v1", "api_key": KEY, **extra}


def profile(**extra):
    return load_settings(providers=[one(**extra)]).providers[0]


def refused(providers: list[dict]) -> str:
    with pytest.raises(ConfigurationError) as info:
        load_settings(providers=providers)
    assert KEY not in str(info.value)
    return str(info.value)


def test_defaults_follow_the_kind():
    openai = profile()
    assert (openai.endpoints[0], openai.max_requests_per_batch, openai.auth_style) == (
        CHAT,
        50_000,
        "bearer",
    )
    claude = profile(kind="anthropic", base_url="https://api.anthropic.com")
    assert claude.endpoints == ["/v1/messages"]
    assert (claude.max_requests_per_batch, claude.max_bytes_per_batch) == (100_000, 256 << 20)
    assert (claude.auth_style, claude.anthropic_version) == ("x-api-key", "2023-06-01")
    assert claude.batches_path == "/v1/messages/batches"
    azure = profile(kind="azure", base_url="https://res.openai.azure.com")
    assert (azure.auth_style, azure.max_requests_per_batch) == ("api-key", 100_000)
    assert auth_headers(azure) == {"api-key": KEY}
    assert auth_headers(claude) == {"x-api-key": KEY}
    assert auth_headers(profile(kind="anthropic", auth_style="bearer")) == {
        "Authorization": f"Bearer {KEY}"
    }


@pytest.mark.parametrize(
    ("extra", "named", "problem"),
    [
        ({"kind": "anthropic", "extra_upload_fields": {"a": "b"}}, "extra_upload_fields", "kind"),
        ({"kind": "anthropic", "file_lifetime_cap_s": 172800}, "file_lifetime_cap_s", "kind"),
        ({"kind": "anthropic", "endpoints": [CHAT]}, "endpoints", "unsupported"),
        ({"anthropic_version": "2023-06-01"}, "anthropic_version", "kind 'openai'"),
        ({"batches_path": "/v1/batches"}, "batches_path", "kind 'openai'"),
        ({"api_version": "2024-10-21"}, "api_version", "only to azure"),
        ({"kind": "anthropic", "batches_path": "v1/batches"}, "batches_path", "a path"),
        ({"kind": "azure", "base_url": "https://r.openai.azure.com/openai/v1"}, "0", "resource"),
        ({"kind": "azure", "file_expires_after_s": 172800}, "0", "1209600-2592000 s"),
        ({"file_expires_after_s": 2_600_000}, "0", "kind 'openai' accepts file expiries of 3600-"),
        ({"file_lifetime_cap_s": 2_600_000}, "0", "kind 'openai' accepts file expiries of 3600-"),
        ({"auth_style": "cookie"}, "auth_style", "bearer"),
        ({"max_batches_in_flight": 0}, "max_batches_in_flight", "greater than 0"),
        ({"enqueued_token_budget": {"gpt-*": 0}}, "enqueued_token_budget", "greater than 0"),
        ({"token_estimates": {"*": 0}}, "token_estimates", "greater than 0"),
        ({"token_estimates": {"*": "tiktoken:o200k_base"}}, "token_estimates", "pip install"),
        ({"token_estimates": {"*": "no_such_module:f"}}, "token_estimates", "cannot load"),
        ({"token_estimates": {"*": "words"}}, "token_estimates", "neither a number"),
        ({"fallbacks": ["p"]}, "0", "other profiles"),
    ],
)
def test_bad_profile_settings_name_the_setting(extra, named, problem):
    message = refused([one(**extra)])
    assert f"providers.{named}" in message or f"providers.0.{named}" in message, message
    assert problem in message, message


def test_fallbacks_must_exist_and_speak_the_same_protocol():
    claude = one(name="c", kind="anthropic")
    assert "no profile named 'x'" in refused([one(fallbacks=["x"])])
    assert "accepts none of" in refused([one(fallbacks=["c"]), claude])
    ok = load_settings(providers=[one(fallbacks=["az"]), one(name="az", kind="azure")])
    assert ok.profile("p").fallbacks == ["az"]


def test_token_estimate_and_budget_pick_the_first_matching_glob():
    p = profile(
        token_estimates={"gpt-4o*": 2.5, "*": "tests.providers.test_profiles:count_words"},
        enqueued_token_budget={"gpt-4o-mini": 10, "gpt-*": 1000},
    )
    assert p.token_estimate("gpt-4o-mini") == 2.5 and p.bytes_per_token("gpt-4o-mini") == 2.5
    assert p.bytes_per_token("llama-3") == 1.0
    assert tokenizer(p.token_estimate("llama-3"))("three little words") == 3
    assert (p.token_budget("gpt-4o-mini"), p.token_budget("gpt-4.1"), p.token_budget("x")) == (
        10,
        1000,
        None,
    )
    assert profile().token_estimate("gpt-4o") == 4.0


def test_tiktoken_is_used_when_installed(monkeypatch):
    """tiktoken's encoding files cannot be fetched here; a stand-in module with its API
    shows the wiring (import check at load, get_encoding, encode)."""
    fake = types.ModuleType("tiktoken")
    fake.__spec__ = importlib.machinery.ModuleSpec("tiktoken", None)
    seen = []

    class Encoding:
        def encode(self, text, disallowed_special=()):
            return text.split()

    def get_encoding(name):
        seen.append(name)
        return Encoding()

    fake.get_encoding = get_encoding
    monkeypatch.setitem(sys.modules, "tiktoken", fake)
    p = profile(token_estimates={"*": "tiktoken:o200k_base"})
    tokenizer.cache_clear()
    try:
        assert tokenizer(p.token_estimate("gpt-4o"))("a b c d") == 4 and seen == ["o200k_base"]
    finally:
        tokenizer.cache_clear()


def test_messages_requests_and_requests_beyond_the_budget_are_refused_at_the_door(relays):
    with start_emulator(fast_emulator_config()) as emu:
        providers = [
            {
                "name": "c",
                "kind": "anthropic",
                "base_url": emu.base_url,
                "api_key": "k",
                "models": ["claude-*"],
            },
            {
                "name": "o",
                "base_url": emu.openai_base_url,
                "api_key": "k",
                "enqueued_token_budget": {"gpt-*": 100},
            },
        ]
        producer, _ = relays(emu, providers)
        with pytest.raises(errors.InvalidRequestError, match="max_tokens"):
            producer.submit(
                "/v1/messages",
                {"model": "claude-x", "messages": [{"role": "user", "content": "x"}]},
            )
        with pytest.raises(errors.InvalidRequestError, match="messages"):
            producer.submit("/v1/messages", {"model": "claude-x", "max_tokens": 5})
        with pytest.raises(errors.UnknownEndpointError):
            producer.submit("/v1/messages", chat("x", "gpt-4o"))
        producer.submit(CHAT, chat("fits"))
        with pytest.raises(errors.RequestTooLargeError, match="enqueued_token_budget"):
            producer.submit(CHAT, chat("x" * 400))


@pytest.mark.parametrize(
    "estimate", [3.0, "tests.providers.test_profiles:count_words"], ids=["ratio", "tokenizer"]
)
def test_a_batch_reserves_its_estimated_tokens(relays, estimate):
    with start_emulator(fast_emulator_config()) as emu:
        p = {
            "name": "o",
            "base_url": emu.openai_base_url,
            "api_key": emu.api_key,
            "token_estimates": {"gpt-*": estimate},
        }
        producer, worker = relays(emu, [p])
        producer.submit_many([{"endpoint": CHAT, "body": chat(f"word {i} " * i)} for i in range(9)])
        [bid] = aggregate(worker, now=worker.now() + 10_000)
        bodies = [body for _, body in iter_items(worker, bid)]
        if isinstance(estimate, float):
            sizes = [
                int(worker.redis.hget(worker.keys.req(rid), "bytes"))
                for rid, _ in iter_items(worker, bid)
            ]
            expected = sum(math.ceil(s / estimate) for s in sizes)  # exact, from the claim
        else:
            expected = sum(count_words(b.decode()) for b in bodies)
        assert submit_batch(worker, bid) == "submitted"
        key = worker.keys.tokens("o", "gpt-4o-mini")
        assert int(worker.redis.hget(key, bid)) == expected == int(worker.batch(bid)["tokens"])


def test_every_kind_has_its_facts_and_an_adapter():
    """A kind is its facts (config/kinds.py), its name in the settings and its adapter."""
    assert set(get_args(Kind)) == set(KINDS) == set(ADAPTERS)
    for name, kind in KINDS.items():
        made = profile(kind=name, base_url="https://provider.example")
        assert made.provider_kind is kind
        assert tuple(made.endpoints) == kind.endpoints
        assert ADAPTERS[name].kind is kind
