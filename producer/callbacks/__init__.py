"""Callbacks a web app attaches to a request: the kinds, their checks and their stored form.

Each kind is a frozen dataclass in its own module with a `kind` name (stored in the request
record), `check` (refuse it at submit), `to_record` and `from_record`; `CALLBACK_KINDS` maps
the name to the class. The worker sends each kind with the sender registered under the same
name in `worker.senders`. Adding a kind (an SQS queue, a Redis stream) is its module here plus
a line in `CALLBACK_KINDS`, and its sender plus a line in `worker.senders.SENDERS`. This side
needs no worker dependencies: a web app imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, Self

import orjson

from batchrelay.producer import errors
from batchrelay.producer.callbacks.addresses import address_block_reason
from batchrelay.producer.callbacks.celery_task import CeleryTask
from batchrelay.producer.callbacks.policy import WebhookPolicy
from batchrelay.producer.callbacks.resolution import clear_resolution_cache, resolve_webhook_host
from batchrelay.producer.callbacks.webhook import Webhook, check_webhook_port, check_webhook_url


class CallbackKind(Protocol):
    """What every callback kind provides (see the module docstring)."""

    kind: ClassVar[str]

    def check(self, policy: WebhookPolicy, *, resolve: bool = True) -> None: ...

    def to_record(self) -> dict[str, Any]: ...

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Self: ...


CALLBACK_KINDS: dict[str, type[CallbackKind]] = {k.kind: k for k in (Webhook, CeleryTask)}
# The type of every `callback=` parameter: any registered kind.
Callback = CallbackKind


def validate_callback(
    cb: object, policy: WebhookPolicy, *, resolve: bool = True
) -> CallbackKind | None:
    """Check a callback given to submit(); return it unchanged, or raise InvalidCallbackError."""
    if cb is None:
        return None
    if not isinstance(cb, tuple(CALLBACK_KINDS.values())):
        names = ", ".join(k.__name__ for k in CALLBACK_KINDS.values())
        hint = "; wrap a URL as Webhook(url)" if isinstance(cb, str) else ""
        raise errors.InvalidCallbackError(
            f"callback must be {names} or None, not {type(cb).__name__}{hint}"
        )
    cb.check(policy, resolve=resolve)
    return cb


def callback_json(cb: CallbackKind | None) -> bytes:
    """The callback as stored in the request record (empty: none)."""
    return b"" if cb is None else orjson.dumps(cb.to_record())


def callback_from_record(record: Mapping[str, Any] | None) -> CallbackKind | None:
    """Rebuild a callback from its `to_record()` form (as stored in Redis); None means none."""
    if not record:
        return None
    kind = record.get("kind")
    cls = CALLBACK_KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise errors.InvalidCallbackError(f"unknown callback record kind {kind!r}")
    try:
        return cls.from_record(record)
    except KeyError as exc:
        raise errors.InvalidCallbackError(f"{kind} callback record lacks {exc}") from None


__all__ = [
    "CALLBACK_KINDS",
    "Callback",
    "CallbackKind",
    "CeleryTask",
    "Webhook",
    "WebhookPolicy",
    "address_block_reason",
    "callback_from_record",
    "callback_json",
    "check_webhook_port",
    "check_webhook_url",
    "clear_resolution_cache",
    "resolve_webhook_host",
    "validate_callback",
]
