"""The provider call's retry rules (pure logic: canned responses, a recorded sleep)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from batchrelay.worker.providers.base import ProviderError
from batchrelay.worker.providers.http import (
    MAX_RETRY_AFTER_S,
    call,
    iter_byte_lines,
    retry_after_s,
)

URL = "http://provider.invalid/v1/batches"


def answers(*responses: httpx.Response | Exception) -> tuple[Callable[[], httpx.Response], list]:
    queue, sent = list(responses), []

    def send() -> httpx.Response:
        sent.append(1)
        item = queue.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    return send, sent


def status(code: int, **headers: str) -> httpx.Response:
    body = {"error": {"message": f"status {code}"}}
    return httpx.Response(code, json=body, headers=headers, request=httpx.Request("POST", URL))


def test_retry_after_is_honoured_and_capped():
    slept: list[float] = []
    send, sent = answers(
        status(503, **{"retry-after": "3"}), status(429, **{"retry-after": "999"}), status(200)
    )
    assert call(send, what="list", max_retries=3, sleep=slept.append).status_code == 200
    assert slept == [3.0, MAX_RETRY_AFTER_S] and len(sent) == 3


def test_retry_after_ms_wins_over_retry_after():
    response = status(503, **{"retry-after": "9", "retry-after-ms": "250"})
    assert retry_after_s(response) == 0.25
    assert retry_after_s(status(503, **{"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0
    assert retry_after_s(status(503, **{"retry-after": "soon"})) is None


def test_a_create_is_not_repeated_after_a_5xx_but_carries_the_hint():
    slept: list[float] = []
    send, sent = answers(status(500, **{"retry-after": "2"}))
    with pytest.raises(ProviderError) as info:
        call(send, what="create", max_retries=3, idempotent=False, sleep=slept.append)
    assert (info.value.status, info.value.retryable, info.value.retry_after) == (500, True, 2.0)
    assert len(sent) == 1 and slept == []


def test_a_429_is_a_refusal_so_even_a_create_is_retried():
    slept: list[float] = []
    send, sent = answers(status(429, **{"retry-after": "1"}), status(200))
    assert call(send, what="create", max_retries=2, idempotent=False, sleep=slept.append)
    assert slept == [1.0] and len(sent) == 2


def test_a_4xx_is_final_and_has_no_hint():
    send, _ = answers(status(400, **{"retry-after": "5"}))
    with pytest.raises(ProviderError) as info:
        call(send, what="create", max_retries=3, sleep=lambda s: None)
    assert (info.value.retryable, info.value.retry_after) == (False, None)


def test_a_create_whose_request_was_sent_is_never_resent_by_the_call():
    request = httpx.Request("POST", URL)
    send, sent = answers(httpx.ReadTimeout("slow", request=request))
    with pytest.raises(ProviderError) as info:
        call(send, what="create", max_retries=3, idempotent=False, sleep=lambda s: None)
    assert info.value.retryable and len(sent) == 1  # the caller reconciles before a retry
    send, sent = answers(httpx.ConnectError("refused", request=request), status(200))
    assert call(send, what="create", max_retries=3, idempotent=False, sleep=lambda s: None)
    assert len(sent) == 2  # never reached the provider: safe to send again


def test_streamed_lines_are_joined_across_chunks():
    """Lines split anywhere by the transport come out whole; blank lines are dropped; a line
    longer than many chunks is joined once (not re-copied per chunk)."""
    long = b"x" * 100_000
    chunks = [
        b'{"a"',
        b":1}\n\n",
        b'{"b":2}\n{"c"',
        *[long[i : i + 1000] for i in range(0, 100_000, 1000)],
        b"\n",
        b"tail",
    ]
    response = httpx.Response(200, content=iter(chunks))
    assert list(iter_byte_lines(response)) == [b'{"a":1}', b'{"b":2}', b'{"c"' + long, b"tail"]
