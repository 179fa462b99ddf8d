"""The root of batchrelay's exceptions lives here because every package may import `config`."""

from __future__ import annotations


class BatchRelayError(Exception):
    """Base class of every error batchrelay raises to a caller."""


class ConfigurationError(BatchRelayError):
    """Invalid settings; the message names the setting and the problem."""
