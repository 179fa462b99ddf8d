"""batchrelay: single LLM requests in, provider Batch API jobs out, each result back by callback.

What a web app imports: `from batchrelay import BatchRelay, AsyncBatchRelay, Webhook, CeleryTask`.
Importing it pulls in redis-py, httpx and pydantic, never Celery's worker side, Flower or a
web server. The Celery app is `batchrelay.worker`, the emulator `batchrelay.emulator`, the
settings `batchrelay.config`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
        QuotaExceededError,
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

# Each public name and the module that defines it. They are imported on first use, so a
# command that needs none of them (`batchrelay run`) does not pay for the producer client's
# redis.asyncio and cluster support at start-up.
_HOME = {
    "CeleryTask": "batchrelay.producer.callbacks",
    "Webhook": "batchrelay.producer.callbacks",
    "AsyncBatchRelay": "batchrelay.producer.client",
    "BatchRelay": "batchrelay.producer.client",
    "SubmitItem": "batchrelay.producer.core",
    "RequestStatus": "batchrelay.producer.records",
    "StateCounts": "batchrelay.producer.records",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name) or ("batchrelay.producer.errors" if name in __all__ else None)
    if home is None:
        raise AttributeError(f"module 'batchrelay' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


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
    "QuotaExceededError",
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
