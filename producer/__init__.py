"""What a web app imports: `from producer import BatchRelay, AsyncBatchRelay, Webhook, CeleryTask`.

Importing it pulls in redis-py and pydantic, never Celery.
"""

from producer.callbacks import CeleryTask, Webhook
from producer.client import AsyncBatchRelay, BatchRelay, SubmitItem
from producer.errors import (
    BatchRelayError,
    CancelError,
    ConfigurationError,
    IdempotencyConflictError,
    InvalidCallbackError,
    InvalidMetadataError,
    InvalidRequestError,
    MissingModelError,
    RequestNotFoundError,
    RequestTooLargeError,
    ResultTimeoutError,
    StreamingNotSupportedError,
    UnknownEndpointError,
    UnknownModelError,
)
from producer.records import RequestStatus

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
    "RequestNotFoundError",
    "RequestStatus",
    "RequestTooLargeError",
    "ResultTimeoutError",
    "StreamingNotSupportedError",
    "SubmitItem",
    "UnknownEndpointError",
    "UnknownModelError",
    "Webhook",
]
