"""batchrelay: single LLM requests in, provider Batch API jobs out, each result back by callback.

What a web app imports: `from batchrelay import BatchRelay, AsyncBatchRelay, Webhook, CeleryTask`.
Importing it pulls in redis-py, httpx and pydantic, never Celery's worker side, Flower or a
web server. The Celery app is `batchrelay.worker`, the emulator `batchrelay.emulator`, the
settings `batchrelay.config`.
"""

from batchrelay.producer.callbacks import CeleryTask, Webhook
from batchrelay.producer.client import AsyncBatchRelay, BatchRelay
from batchrelay.producer.core import SubmitItem
from batchrelay.producer.errors import (
    BatchRelayError,
    CancelError,
    ConfigurationError,
    IdempotencyConflictError,
    InvalidCallbackError,
    InvalidMetadataError,
    InvalidRequestError,
    MissingModelError,
    RelayUnavailableError,
    RequestNotFoundError,
    RequestTooLargeError,
    ResultTimeoutError,
    StreamingNotSupportedError,
    SubmitTooLargeError,
    UnknownEndpointError,
    UnknownModelError,
)
from batchrelay.producer.records import RequestStatus, StateCounts

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
    "SubmitTooLargeError",
    "UnknownEndpointError",
    "UnknownModelError",
    "Webhook",
]
