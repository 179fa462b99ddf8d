"""Settings shared by the producer, the worker and the CLI."""

from batchrelay.config.errors import BatchRelayError, ConfigurationError
from batchrelay.config.settings import OPENAI_ENDPOINTS, ProviderProfile, Settings, load_settings

__all__ = [
    "OPENAI_ENDPOINTS",
    "BatchRelayError",
    "ConfigurationError",
    "ProviderProfile",
    "Settings",
    "load_settings",
]
