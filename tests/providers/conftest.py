"""Fixtures of the provider tests: a webhook receiver, and relays (producer + inline worker)
built from a list of profiles, closed at the end."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from batchrelay import BatchRelay
from batchrelay.worker.context import Relay
from tests._receiver import WebhookReceiver
from tests.providers.helpers import settings_for


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r


@pytest.fixture
def relays(redis_url: str) -> Iterator[Callable[..., tuple[BatchRelay, Relay]]]:
    made: list[tuple[BatchRelay, Relay]] = []

    def make(emu: Any, providers: list[dict], **overrides: Any) -> tuple[BatchRelay, Relay]:
        # Faults fail 30% of a batch's requests: ten attempts make an unlucky streak unlikely.
        overrides.setdefault("max_attempts", 10)
        settings = settings_for(redis_url, emu, providers, **overrides)
        pair = (BatchRelay(settings), Relay(settings))
        made.append(pair)
        return pair

    yield make
    for producer, worker in made:
        producer.close()
        worker.close()
