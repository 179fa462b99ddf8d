"""Settings shared by the producer, the worker and the CLI."""

from batchrelay.config.errors import BatchRelayError, ConfigurationError
from batchrelay.config.kinds import OPENAI_ENDPOINTS
from batchrelay.config.settings import ProviderProfile, Settings, load_settings

__all__ = [
    "OPENAI_ENDPOINTS",
    "BatchRelayError",
    "ConfigurationError",
    "ProviderProfile",
    "Settings",
    "load_settings",
]
