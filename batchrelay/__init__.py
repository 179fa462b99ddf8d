"""batchrelay: single LLM requests in, provider Batch API jobs out, each result back by callback.

What a web app imports: `from batchrelay import BatchRelay, AsyncBatchRelay, Webhook, CeleryTask`.
Importing it pulls in redis-py, httpx and pydantic, never Celery's worker side, Flower or a
web server. The Celery app is `batchrelay.worker`, the emulator `batchrelay.emulator`, the
settings `batchrelay.config`.
"""

from batchrelay.producer import (
    AsyncBatchRelay,
    BatchRelay,
    BatchRelayError,
    CancelError,
    CeleryTask,
    ConfigurationError,
    IdempotencyConflictError,
    InvalidCallbackError,
    InvalidMetadataError,
    InvalidRequestError,
    MissingModelError,
    RelayUnavailableError,
    RequestNotFoundError,
    RequestStatus,
    RequestTooLargeError,
    ResultTimeoutError,
    StateCounts,
    StreamingNotSupportedError,
    SubmitItem,
    UnknownEndpointError,
    UnknownModelError,
    Webhook,
)

__all__ = [
    "AsyncBatchRelay",
    "BatchRelay",
    "BatchRelayError",
    "CancelError",
    "CeleryTask",
    "ConfigurationError",
    "IdempotencyConflictError",
    "InvalidCallbackError",
    "InvalidMetadataError",
    "InvalidRequestError",
    "MissingModelError",
    "RelayUnavailableError",
    "RequestNotFoundError",
    "RequestStatus",
    "StateCounts",
    "RequestTooLargeError",
    "ResultTimeoutError",
    "StreamingNotSupportedError",
    "SubmitItem",
    "UnknownEndpointError",
    "UnknownModelError",
    "Webhook",
]
