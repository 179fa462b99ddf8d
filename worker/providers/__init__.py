"""One adapter per wire protocol; `make_adapter` picks it from the profile's `kind`."""

from __future__ import annotations

from batchrelay.config import ProviderProfile, Settings
from batchrelay.worker.providers.anthropic import AnthropicAdapter
from batchrelay.worker.providers.base import (
    BatchAdapter,
    Claim,
    Outcome,
    ProviderBatch,
    ProviderError,
    ReconcilePending,
)
from batchrelay.worker.providers.gemini import GeminiAdapter
from batchrelay.worker.providers.mistral import MistralAdapter
from batchrelay.worker.providers.openai_compat import AzureAdapter, OpenAIAdapter

# kind name -> adapter; a test checks that every kind in config/kinds.py has one.
ADAPTERS: dict[str, type[BatchAdapter]] = {
    a.kind.name: a
    for a in (OpenAIAdapter, AzureAdapter, AnthropicAdapter, MistralAdapter, GeminiAdapter)
}


def make_adapter(profile: ProviderProfile, settings: Settings) -> BatchAdapter:
    return ADAPTERS[profile.kind](profile, settings)


__all__ = [
    "BatchAdapter",
    "Claim",
    "Outcome",
    "ProviderBatch",
    "ProviderError",
    "ReconcilePending",
    "make_adapter",
]
