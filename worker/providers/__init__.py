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
from batchrelay.worker.providers.openai_compat import AzureAdapter, OpenAIAdapter

ADAPTERS: dict[str, type[BatchAdapter]] = {
    "openai": OpenAIAdapter,
    "azure": AzureAdapter,
    "anthropic": AnthropicAdapter,
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
