"""Each fault, set through the admin API, observed through the SDKs."""

from __future__ import annotations

import time

import anthropic
import httpx
import httpx2
import openai
import orjson
import pytest

from batchrelay.emulator.faults import digest_fails, line_digest
from tests._emulator import openai_client
from tests.emulator.helpers import (
    create_batch,
    message_request,
    read_jsonl,
    request_line,
    upload,
    wait_batch,
    wait_message_batch,
)


def _failing(batch_id: str, n: int, fraction: float) -> set[str]:
    ids = [f"req-{i}" for i in range(n)]
    return {c for c in ids if digest_fails(line_digest(batch_id, c), fraction)}


@pytest.mark.parametrize("status", [400, 429, 500])
def test_request_errors_go_to_the_error_file(emulator, emulator_openai, status):
    emulator.set_faults(request_error_fraction=0.3, request_error_status=status)
    first = create_batch(emulator_openai, [request_line(i) for i in range(60)])
    first = wait_batch(emulator_openai, first.id)
    errors = read_jsonl(emulator_openai, first.error_file_id)
    assert {ln["custom_id"] for ln in errors} == _failing(first.id, 60, 0.3)
    assert 5 < len(errors) < 35
    assert first.request_counts.failed == len(errors)
    assert first.request_counts.completed == 60 - len(errors)
    for line in errors:
        assert line["error"] is None
        assert line["response"]["status_code"] == status
        envelope = line["response"]["body"]["error"]
        assert set(envelope) == {"message", "type", "param", "code"}
    expected_type = {400: "invalid_request_error", 429: "requests", 500: "server_error"}[status]
    assert errors[0]["response"]["body"]["error"]["type"] == expected_type
    second = wait_batch(
        emulator_openai, create_batch(emulator_openai, [request_line(i) for i in range(60)]).id
    )
    retried = {ln["custom_id"] for ln in read_jsonl(emulator_openai, second.error_file_id)}
    assert retried == _failing(second.id, 60, 0.3)
    assert retried != {ln["custom_id"] for ln in errors}


def test_request_errors_anthropic(emulator, emulator_anthropic):
    emulator.set_faults(request_error_fraction=0.5, request_error_status=429)
    batch = emulator_anthropic.messages.batches.create(
        requests=[message_request(i) for i in range(40)]
    )
    batch = wait_message_batch(emulator_anthropic, batch.id)
    results = list(emulator_anthropic.messages.batches.results(batch.id))
    errored = {r.custom_id for r in results if r.result.type == "errored"}
    assert errored == _failing(batch.id, 40, 0.5)
    assert batch.request_counts.errored == len(errored)
    sample = next(r for r in results if r.result.type == "errored")
    assert sample.result.error.error.type == "rate_limit_error"


@pytest.mark.parametrize(
    ("code", "line", "param"),
    [
        ("token_limit_exceeded", None, None),
        ("invalid_json_line", 1, None),
        ("model_not_found", 1, "body.model"),
    ],
)
def test_fail_validation_next(emulator, emulator_openai, code, line, param):
    emulator.set_faults(fail_validation_next=1, fail_validation_code=code)
    failed = wait_batch(emulator_openai, create_batch(emulator_openai, [request_line(0)]).id)
    assert failed.status == "failed"
    error = failed.errors.data[0]
    assert (error.code, error.line, error.param) == (code, line, param)
    assert emulator.faults()["fail_validation_next"] == 0
    assert (
        wait_batch(emulator_openai, create_batch(emulator_openai, [request_line(0)]).id).status
        == "completed"
    )


def test_expire_next_openai(emulator, emulator_openai):
    emulator.set_faults(expire_next=1, expire_after_fraction=0.25)
    batch = wait_batch(
        emulator_openai, create_batch(emulator_openai, [request_line(i) for i in range(40)]).id
    )
    assert batch.status == "expired"
    done = read_jsonl(emulator_openai, batch.output_file_id)
    never = read_jsonl(emulator_openai, batch.error_file_id)
    assert len(done) == 10 and len(never) == 30
    assert {ln["error"]["code"] for ln in never} == {"batch_expired"}
    assert batch.request_counts.model_dump() == {"total": 40, "completed": 10, "failed": 30}
    assert (
        wait_batch(emulator_openai, create_batch(emulator_openai, [request_line(0)]).id).status
        == "completed"
    )


def test_expire_next_anthropic(emulator, emulator_anthropic):
    emulator.set_faults(expire_next=1, expire_after_fraction=0.5)
    batch = emulator_anthropic.messages.batches.create(
        requests=[message_request(i) for i in range(10)]
    )
    batch = wait_message_batch(emulator_anthropic, batch.id)
    assert (batch.request_counts.succeeded, batch.request_counts.expired) == (5, 5)


def test_stuck_finalizing(emulator, emulator_openai):
    emulator.set_faults(stuck_finalizing_next=1, stuck_finalizing_s=0.6)
    batch = create_batch(emulator_openai, [request_line(0)])
    start = time.monotonic()
    batch = wait_batch(emulator_openai, batch.id, {"finalizing"})
    batch = wait_batch(emulator_openai, batch.id)
    assert batch.status == "completed"
    assert time.monotonic() - start >= 0.5
    assert batch.completed_at - batch.finalizing_at >= 0


def test_http_errors_with_retry_after(emulator, emulator_openai):
    emulator.set_faults(http_error_rate=1.0, http_error_statuses=[429], retry_after_s=7)
    with pytest.raises(openai.RateLimitError) as info:
        emulator_openai.files.list()
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.response.headers["retry-after-ms"] == "7000"
    assert info.value.body["code"] == "rate_limit_exceeded"
    emulator.set_faults(http_error_statuses=[500, 503])
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            emulator_openai.batches.list()
    assert emulator.stats()["http_faults_injected"] == 3
    emulator.reset_faults()
    emulator_openai.files.list()


def test_http_errors_are_retried_by_the_sdk(emulator):
    emulator.set_faults(http_error_next=2, retry_after_s=0.01)
    client = openai_client(emulator, max_retries=2)
    assert client.files.list().data == []
    assert emulator.stats()["http_faults_injected"] == 2


def test_http_error_rate_is_a_fraction(emulator, emulator_openai):
    emulator.set_faults(http_error_rate=0.5, http_error_statuses=[503])
    failures = 0
    for _ in range(40):
        try:
            emulator_openai.files.list()
        except openai.InternalServerError:
            failures += 1
    assert 8 <= failures <= 32


def test_http_error_match_and_admin_exempt(emulator, emulator_openai):
    emulator.set_faults(http_error_rate=1.0, http_error_match="POST */batches")
    source = upload(emulator_openai, [request_line(0)])
    with pytest.raises(openai.APIStatusError):
        emulator_openai.batches.create(
            input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert emulator.stats()["batches_created"]["total"] == 0


def test_lost_reply_creates_the_batch_but_answers_500(emulator, emulator_openai):
    emulator.set_faults(lost_reply_next=1)
    source = upload(emulator_openai, [request_line(0)])  # not a batches call: answered
    with pytest.raises(openai.InternalServerError):
        emulator_openai.batches.create(
            input_file_id=source.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"claim": "c1"},
        )
    [made] = emulator_openai.batches.list().data  # ...yet the batch exists
    assert made.metadata == {"claim": "c1"} and made.input_file_id == source.id
    assert emulator.stats()["replies_lost"] == 1
    again = create_batch(emulator_openai, [request_line(1)])  # only the next N
    assert again.id != made.id


def test_lost_reply_anthropic(emulator, emulator_anthropic):
    emulator.set_faults(lost_reply_next=1)
    with pytest.raises(anthropic.InternalServerError) as info:
        emulator_anthropic.messages.batches.create(requests=[message_request(0)])
    assert info.value.body["error"]["type"] == "api_error"
    [made] = emulator_anthropic.messages.batches.list().data
    assert made.id.startswith("msgbatch_") and emulator.stats()["replies_lost"] == 1


def test_http_errors_anthropic_envelope(emulator, emulator_anthropic):
    emulator.set_faults(http_error_next=1, http_error_statuses=[529])
    with pytest.raises(anthropic.APIStatusError) as info:
        emulator_anthropic.messages.batches.list()
    assert info.value.status_code == 529
    assert info.value.body["error"]["type"] == "overloaded_error"


def test_slow_download(emulator, emulator_openai):
    source = emulator_openai.files.create(
        file=("a.jsonl", b"x" * 40_000, "application/jsonl"), purpose="batch"
    )
    emulator.set_faults(download_bytes_per_s=200_000)
    start = time.monotonic()
    assert len(emulator_openai.files.content(source.id).content) == 40_000
    assert time.monotonic() - start >= 0.15


def test_cut_download_then_recovers(emulator, emulator_openai):
    content = b"y" * 100_000
    source = emulator_openai.files.create(
        file=("a.jsonl", content, "application/jsonl"), purpose="batch"
    )
    emulator.set_faults(download_cut_fraction=0.5, download_cut_next=1)
    with pytest.raises(openai.APIConnectionError):
        emulator_openai.files.content(source.id)
    assert emulator_openai.files.content(source.id).content == content
    assert emulator.stats()["downloads_cut"] == 1
    emulator.set_faults(download_cut_next=None)
    with httpx.stream(
        "GET",
        f"{emulator.openai_base_url}/files/{source.id}/content",
        headers={"Authorization": f"Bearer {emulator.api_key}"},
    ) as response:
        assert response.headers["content-length"] == "100000"
        received = 0
        with pytest.raises(httpx.RemoteProtocolError):
            for chunk in response.iter_raw():
                received += len(chunk)
        assert received == 50_000


def test_cut_results_download_anthropic(emulator, emulator_anthropic):
    batch = emulator_anthropic.messages.batches.create(
        requests=[message_request(i) for i in range(50)]
    )
    wait_message_batch(emulator_anthropic, batch.id)
    emulator.set_faults(download_cut_fraction=0.3)
    # The SDK streams results lazily, so the short read surfaces mid-iteration, unwrapped.
    with pytest.raises((anthropic.APIConnectionError, httpx2.RemoteProtocolError)):
        list(emulator_anthropic.messages.batches.results(batch.id))


MALFORMED_KINDS = ["unparseable_line", "unknown_custom_id", "truncated", "html"]


def _download(emulator, url: str) -> httpx.Response:
    response = httpx.get(url, headers={"Authorization": f"Bearer {emulator.api_key}"})
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    return response


def _check_malformed(kind: str, response: httpx.Response, expected: set[str]) -> None:
    """The body is malformed exactly as `kind` says, and nothing else is wrong with it."""
    body = response.content
    if kind == "html":
        assert response.headers["content-type"].startswith("text/html")
        assert body.startswith(b"<!DOCTYPE html>")
        return
    lines = body.split(b"\n")
    if body.endswith(b"\n"):
        lines.pop()
    parsed: list[str] = []
    bad: list[bytes] = []
    for raw in lines:
        try:
            parsed.append(orjson.loads(raw)["custom_id"])
        except orjson.JSONDecodeError:
            bad.append(raw)
    assert len(parsed) == len(set(parsed))
    if kind == "unparseable_line":
        assert body.endswith(b"\n") and len(bad) == 1
        assert set(parsed) <= expected and len(parsed) == len(expected) - 1
    elif kind == "unknown_custom_id":
        assert not bad and set(parsed) >= expected
        (extra,) = set(parsed) - expected
        assert extra.startswith("unknown-")
    else:
        assert not body.endswith(b"\n") and bad == [lines[-1]]
        assert set(parsed) <= expected and 0 < len(parsed) < len(expected) - 1


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_malformed_output_openai(emulator, emulator_openai, kind):
    emulator.set_faults(
        malformed_output_next=1, malformed_output_kind=kind, request_error_fraction=0.3
    )
    batch = wait_batch(
        emulator_openai, create_batch(emulator_openai, [request_line(i) for i in range(40)]).id
    )
    assert emulator.faults()["malformed_output_next"] == 0
    failing = _failing(batch.id, 40, 0.3)
    succeeded = {f"req-{i}" for i in range(40)} - failing
    assert batch.status == "completed"
    assert batch.request_counts.model_dump() == {
        "total": 40,
        "completed": len(succeeded),
        "failed": len(failing),
    }
    url = f"{emulator.openai_base_url}/files/{batch.output_file_id}/content"
    for _ in range(2 if kind == "html" else 1):
        response = _download(emulator, url)
        _check_malformed(kind, response, succeeded)
    if kind == "truncated":
        assert emulator_openai.files.retrieve(batch.output_file_id).bytes == len(response.content)
    if kind == "html":
        assert emulator_openai.files.content(batch.output_file_id).content.startswith(b"<!DOC")
    errors = read_jsonl(emulator_openai, batch.error_file_id)
    assert {ln["custom_id"] for ln in errors} == failing
    emulator.set_faults(request_error_fraction=0.0)
    clean = wait_batch(
        emulator_openai, create_batch(emulator_openai, [request_line(i) for i in range(5)]).id
    )
    assert {ln["custom_id"] for ln in read_jsonl(emulator_openai, clean.output_file_id)} == {
        f"req-{i}" for i in range(5)
    }


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_malformed_output_anthropic(emulator, emulator_anthropic, kind):
    emulator.set_faults(malformed_output_next=1, malformed_output_kind=kind)
    batch = emulator_anthropic.messages.batches.create(
        requests=[message_request(i) for i in range(30)]
    )
    batch = wait_message_batch(emulator_anthropic, batch.id)
    assert emulator.faults()["malformed_output_next"] == 0
    assert batch.request_counts.succeeded == 30
    for _ in range(2 if kind == "html" else 1):
        _check_malformed(
            kind, _download(emulator, batch.results_url), {f"req-{i}" for i in range(30)}
        )
    results = emulator_anthropic.messages.batches.results(batch.id)
    if kind == "unknown_custom_id":
        assert len(list(results)) == 31
    else:
        with pytest.raises(ValueError):  # json.JSONDecodeError while iterating
            list(results)
    clean = emulator_anthropic.messages.batches.create(requests=[message_request(0)])
    wait_message_batch(emulator_anthropic, clean.id)
    assert [r.custom_id for r in emulator_anthropic.messages.batches.results(clean.id)] == ["req-0"]


def test_token_budget_per_model(emulator, emulator_openai):
    emulator.set_timings(processing_rate_rps=20)
    line_tokens = len(orjson.dumps(request_line(0)) + b"\n") // 4
    emulator.set_faults(token_budget_per_model={"gpt-4o-mini": line_tokens * 15})
    first = create_batch(emulator_openai, [request_line(i) for i in range(10)])
    assert wait_batch(emulator_openai, first.id, {"in_progress", "failed"}).status == "in_progress"
    second = wait_batch(
        emulator_openai, create_batch(emulator_openai, [request_line(i) for i in range(10)]).id
    )
    assert second.status == "failed"
    error = second.errors.data[0]
    assert error.code == "token_limit_exceeded" and error.line is None
    assert "gpt-4o-mini" in error.message
    other = [
        request_line(i, body={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]})
        for i in range(10)
    ]
    assert (
        wait_batch(
            emulator_openai, create_batch(emulator_openai, other).id, {"in_progress", "failed"}
        ).status
        == "in_progress"
    )
    emulator.set_timings(processing_rate_rps=5000)
    assert wait_batch(emulator_openai, first.id).status == "completed"
    third = wait_batch(
        emulator_openai, create_batch(emulator_openai, [request_line(i) for i in range(10)]).id
    )
    assert third.status == "completed"


def test_bad_fault_values_are_400(emulator):
    response = httpx.patch(
        f"{emulator.base_url}/_emulator/faults",
        json={"request_error_fraction": 2},
        headers={"Authorization": f"Bearer {emulator.api_key}"},
    )
    assert response.status_code == 400
    assert "request_error_fraction" in response.json()["error"]["message"]
    unknown = httpx.patch(
        f"{emulator.base_url}/_emulator/faults",
        json={"no_such_fault": 1},
        headers={"Authorization": f"Bearer {emulator.api_key}"},
    )
    assert unknown.status_code == 400
    kind = httpx.patch(
        f"{emulator.base_url}/_emulator/faults",
        json={"malformed_output_kind": "binary"},
        headers={"Authorization": f"Bearer {emulator.api_key}"},
    )
    assert kind.status_code == 400


def test_faults_set_at_start(emulator_factory):
    emu = emulator_factory(faults={"http_error_next": 1, "http_error_statuses": [503]})
    client = openai_client(emu)
    with pytest.raises(openai.InternalServerError):
        client.files.list()
    client.files.list()
    emu.set_faults(http_error_next=1)
    emu.reset_faults()
    assert emu.faults()["http_error_next"] == 1
    with pytest.raises(openai.InternalServerError):
        client.files.list()
