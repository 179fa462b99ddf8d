"""The producer side: `BatchRelay`, `AsyncBatchRelay` and their types (re-exported by `batchrelay`).

Importing it pulls in redis-py and pydantic, never Celery.
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
    "UnknownEndpointError",
    "UnknownModelError",
    "Webhook",
]
