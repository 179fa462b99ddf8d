"""API faults for every provider kind that is not plain OpenAI (that one is in
tests/relay/test_pipeline.py): HTTP 429/500/503 with Retry-After on 30% of the API
calls, and result downloads cut off half-way. Anthropic native, Azure and an OpenAI-style
reseller each deliver every request exactly once, joined to the request that asked for it,
with each request sent to the provider once and no claim owning two provider batches."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from batchrelay.emulator import EmulatorHandle, start_emulator
from batchrelay.worker.providers import ProviderError
from tests._emulator import anthropic_client, openai_client
from tests.providers.helpers import Scenario, chat_text, message_text, messages
from tests.providers.test_anthropic import MESSAGES, VERSION, native
from tests.providers.test_openai_style import CAP_48H, DEPLOYMENT
from tests.relay.harness import CHAT, chat, drive, fast_emulator_config

N = 40
CUTS = 3
FAULTS = {
    "http_error_rate": 0.3,
    "http_error_statuses": [429, 500, 503],
    "retry_after_s": 0.05,
    "download_cut_fraction": 0.5,
    "download_cut_next": CUTS,
}
RESELLER_MODEL = "gpt-4o-mini-batch"


def anthropic_kind() -> tuple[dict[str, Any], Callable[[EmulatorHandle], dict], dict]:
    config = {"anthropic_versions": [VERSION], "auth_headers": ["x-api-key"]}
    return config, lambda emu: native(emu), {"endpoint": MESSAGES, "body": messages}


def azure_kind() -> tuple[dict[str, Any], Callable[[EmulatorHandle], dict], dict]:
    config = {"models": [DEPLOYMENT], "auth_headers": ["api-key"]}

    def profile(emu: EmulatorHandle) -> dict:
        return {
            "name": "azure",
            "kind": "azure",
            "base_url": emu.base_url,
            "api_key": emu.api_key,
            "models": [DEPLOYMENT],
        }

    return config, profile, {"endpoint": CHAT, "body": lambda text: chat(text, DEPLOYMENT)}


def reseller_kind() -> tuple[dict[str, Any], Callable[[EmulatorHandle], dict], dict]:
    config = {
        "models": [RESELLER_MODEL],
        "auth_headers": ["bearer"],
        "required_upload_fields": ["target_model_names"],
        "max_file_expires_after_s": CAP_48H,
    }

    def profile(emu: EmulatorHandle) -> dict:
        return {
            "name": "litellm",
            "base_url": emu.openai_base_url,
            "api_key": emu.api_key,
            "models": [RESELLER_MODEL],
            "extra_upload_fields": {"target_model_names": "{model}"},
            "file_lifetime_cap_s": CAP_48H,
        }

    return config, profile, {"endpoint": CHAT, "body": lambda text: chat(text, RESELLER_MODEL)}


KINDS = {"anthropic": anthropic_kind, "azure": azure_kind, "reseller": reseller_kind}


def provider_batches(kind: str, emu: EmulatorHandle) -> list[tuple[str, int, str | None]]:
    """(provider batch id, requests it held, relay batch named in its metadata) of every
    batch at the provider, read with the vendor's SDK. Message batches carry no metadata."""
    if kind == "anthropic":
        # This SDK sends Bearer auth and its own version; the strict emulator wants these.
        headers = {"x-api-key": emu.api_key, "anthropic-version": VERSION}
        with contextlib.closing(anthropic_client(emu, default_headers=headers)) as client:
            listed = client.messages.batches.list(limit=100).data
        return [(b.id, sum(b.request_counts.model_dump().values()), None) for b in listed]
    if kind == "azure":
        client = openai.OpenAI(
            base_url=emu.azure_base_url, api_key="-", default_headers={"api-key": emu.api_key}
        )
    else:
        client = openai_client(emu)
    with contextlib.closing(client):
        listed = client.batches.list(limit=100).data
    return [
        (b.id, b.request_counts.total, (b.metadata or {}).get("batchrelay_batch")) for b in listed
    ]


@pytest.fixture(params=list(KINDS))
def kind(request: pytest.FixtureRequest) -> Iterator[tuple[str, EmulatorHandle, Callable, dict]]:
    config, profile, shape = KINDS[request.param]()
    with start_emulator(fast_emulator_config(**config)) as emu:
        yield request.param, emu, profile, shape


def test_api_errors_and_cut_downloads_lose_and_double_nothing(kind, relays, receiver):
    name, emu, make_profile, shape = kind
    reply = message_text if name == "anthropic" else chat_text
    producer, worker = relays(
        emu,
        [{**make_profile(emu), "max_requests_per_batch": 5}],
        delete_provider_files=False,  # message batches stay listable for the count below
        lease_s=1.2,  # a cut-off collection is taken up again one lease later
        http_timeout_s=1,
    )
    scenario = Scenario(producer, worker, emu, receiver, reply=reply, n=N, **shape)
    emu.set_faults(**FAULTS)
    sent = scenario.submit(name)
    drive(worker, lambda: set(sent) <= receiver.ok_ids(), swallow=(ProviderError,), timeout=40)
    stats = emu.stats()
    emu.reset_faults()
    assert stats["http_faults_injected"] >= 3 and stats["downloads_cut"] == CUTS, stats

    # Each request: one webhook, succeeded at its first attempt, with its own text echoed.
    got = scenario.deliver(sent)
    assert all(p["status"] == "succeeded" and p["attempts"] == 1 for p in got.values())
    assert Counter(len(d) for d in receiver.by_id().values()) == Counter({1: N})

    # At the provider: every request sent once, in batches each owned by exactly one claim.
    batches = provider_batches(name, emu)
    assert sum(n for _, n, _ in batches) == N
    assert len(batches) == stats["batches_created"]["total"] >= N // 5
    owners = {
        k.decode(): v.decode()
        for k, v in worker.redis.hgetall(
            worker.keys.pbatches(worker.settings.providers[0].name)
        ).items()
    }
    assert set(owners) == {pid for pid, _, _ in batches}  # each provider batch recorded ...
    assert len(set(owners.values())) == len(owners)  # ... for a claim of its own
    if name != "anthropic":  # and the batch itself names that claim
        assert all(owner == owners[pid] for pid, _, owner in batches)
    assert {producer.status(rid).batch_id for rid in sent} == set(owners.values())
