"""Exceptions raised at the door: each names what was wrong and why, and nothing is stored."""

from __future__ import annotations

from batchrelay.config.errors import BatchRelayError, ConfigurationError

__all__ = ["BatchRelayError", "ConfigurationError"]


class InvalidRequestError(BatchRelayError, ValueError):
    """The request would be rejected by the provider for sure; it was not stored."""


class UnknownEndpointError(InvalidRequestError):
    pass


class MissingModelError(InvalidRequestError):
    pass


class UnknownModelError(InvalidRequestError):
    pass


class RequestTooLargeError(InvalidRequestError):
    pass


class SubmitTooLargeError(BatchRelayError, ValueError):
    """One `submit_many` call holds more batch-line bytes than `submit_max_bytes`; nothing
    was stored. Split the items over several calls."""


class StreamingNotSupportedError(InvalidRequestError):
    pass


class InvalidMetadataError(InvalidRequestError):
    pass


class InvalidCallbackError(InvalidRequestError):
    """A callback that batchrelay refuses to call (scheme, credentials, private address…)."""


class IdempotencyConflictError(BatchRelayError):
    """An idempotency key was reused with another endpoint, body, callback or metadata."""


class RelayUnavailableError(BatchRelayError, ConnectionError):
    """Redis cannot be reached (down, loading, or refusing the password); nothing was done
    that a retry could not repeat. The message names the Redis URL, password masked."""


class RequestNotFoundError(BatchRelayError, KeyError):
    pass


class CancelError(BatchRelayError):
    """The request can no longer be cancelled (its batch was already claimed, or it is final)."""


class ResultTimeoutError(BatchRelayError, TimeoutError):
    pass
