"""The callback-kind registries: producer side (check, record) and worker side (sender) agree,
a new kind plugs in with one registry line, and the producer side needs no worker packages."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from batchrelay.producer import callbacks
from batchrelay.producer.callbacks import (
    CALLBACK_KINDS,
    WebhookPolicy,
    callback_from_record,
    callback_json,
    validate_callback,
)
from batchrelay.producer.errors import InvalidCallbackError
from batchrelay.worker.senders import SENDERS


@dataclass(frozen=True, slots=True)
class RedisStream:
    """A made-up kind, as an app would add one: a dataclass with the four members."""

    kind: ClassVar[str] = "redis-stream"
    stream: str

    def check(self, policy: WebhookPolicy, *, resolve: bool = True) -> None:
        if not self.stream:
            raise InvalidCallbackError("RedisStream.stream must not be empty")

    def to_record(self) -> dict[str, Any]:
        return {"kind": self.kind, "stream": self.stream}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RedisStream:
        return cls(stream=record["stream"])


def test_every_callback_kind_has_a_sender() -> None:
    assert set(CALLBACK_KINDS) == set(SENDERS) == {"webhook", "celery"}


def test_a_new_kind_is_one_registry_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(callbacks.CALLBACK_KINDS, RedisStream.kind, RedisStream)
    cb = validate_callback(RedisStream("results"), WebhookPolicy())
    assert callback_json(cb) == b'{"kind":"redis-stream","stream":"results"}'
    assert callback_from_record({"kind": "redis-stream", "stream": "results"}) == cb
    with pytest.raises(InvalidCallbackError, match="must not be empty"):
        validate_callback(RedisStream(""), WebhookPolicy())
    with pytest.raises(InvalidCallbackError, match="Webhook, CeleryTask, RedisStream or None"):
        validate_callback(object(), WebhookPolicy())


def test_producer_side_imports_without_worker_dependencies() -> None:
    """A web app installs batchrelay without the [worker] extra."""
    code = (
        "import sys\n"
        "for name in ('standardwebhooks', 'redbeat', 'celery'):\n"
        "    sys.modules[name] = None  # any import of it fails\n"
        "import batchrelay.producer.callbacks, batchrelay.producer.intake\n"
        "import batchrelay.config.kinds, batchrelay.config.webhook_secrets\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
