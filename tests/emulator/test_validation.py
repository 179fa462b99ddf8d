"""The asynchronous `validating` phase: each content problem ends the batch in `failed`."""

from __future__ import annotations

import pytest

from tests._emulator import openai_client
from tests.emulator.helpers import create_batch, jsonl, request_line, wait_batch

CHAT = "/v1/chat/completions"


def _line(i: int = 0, **overrides) -> dict:
    return request_line(i, **overrides)


def _without(key: str) -> dict:
    line = _line(1)
    del line[key]
    return line


CASES = {
    "invalid_json": (
        [_line(0), b'{"custom_id": "x", not json', _line(2)],
        "invalid_json_line",
        None,
        2,
    ),
    "not_an_object": ([b"[1, 2, 3]"], "invalid_json_line", None, 1),
    "utf8_bom": ([b"\xef\xbb\xbf" + jsonl([_line(0)]).strip()], "invalid_json_line", None, 1),
    "missing_custom_id": (
        [_line(0), _without("custom_id")],
        "missing_required_parameter",
        "custom_id",
        2,
    ),
    "missing_method": ([_without("method")], "missing_required_parameter", "method", 1),
    "missing_url": ([_without("url")], "missing_required_parameter", "url", 1),
    "missing_body": ([_without("body")], "missing_required_parameter", "body", 1),
    "wrong_method": ([_line(0, method="GET")], "invalid_request", "method", 1),
    "url_mismatch": ([_line(0, url="/v1/embeddings")], "invalid_url", "url", 1),
    "stream_true": (
        [_line(0, body={"model": "gpt-4o-mini", "messages": [], "stream": True})],
        "streaming_unsupported",
        "body.stream",
        1,
    ),
    "duplicate_custom_id": ([_line(0), _line(1), _line(0)], "duplicate_custom_id", "custom_id", 3),
    "mixed_models": (
        [_line(0), _line(1, body={"model": "gpt-4o", "messages": []})],
        "mismatched_model",
        "body.model",
        2,
    ),
    "unknown_model": (
        [_line(0, body={"model": "llama-3", "messages": []})],
        "model_not_found",
        "body.model",
        1,
    ),
    "missing_model": ([_line(0, body={"messages": []})], "invalid_request", "body.model", 1),
    "missing_messages": (
        [_line(0, body={"model": "gpt-4o-mini"})],
        "invalid_request",
        "body.messages",
        1,
    ),
    "empty_file": ([], "empty_file", None, None),
    "only_blank_lines": ([b"", b"  "], "empty_file", None, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_validation_error(emulator_openai, case):
    lines, code, param, line = CASES[case]
    batch = create_batch(emulator_openai, lines, CHAT)
    assert batch.status == "validating"
    batch = wait_batch(emulator_openai, batch.id)
    assert batch.status == "failed"
    assert batch.failed_at is not None and batch.in_progress_at is None
    assert batch.output_file_id is None and batch.error_file_id is None
    assert batch.errors.object == "list"
    first = batch.errors.data[0]
    assert (first.code, first.param, first.line) == (code, param, line)
    assert first.message


def test_every_bad_line_is_reported(emulator_openai):
    lines = [_line(0), b"nope", _without("url"), _line(3, url="/v1/responses"), _line(4)]
    batch = wait_batch(emulator_openai, create_batch(emulator_openai, lines).id)
    assert [(e.code, e.line) for e in batch.errors.data] == [
        ("invalid_json_line", 2),
        ("missing_required_parameter", 3),
        ("invalid_url", 4),
    ]


def test_more_than_50000_requests(emulator_openai):
    line = jsonl([_line(0)]).strip()
    body = b"\n".join(line.replace(b'"req-0"', b'"r%d"' % i) for i in range(50_001))
    source = emulator_openai.files.create(
        file=("big.jsonl", body, "application/jsonl"), purpose="batch"
    )
    batch = emulator_openai.batches.create(
        input_file_id=source.id, endpoint=CHAT, completion_window="24h"
    )
    batch = wait_batch(emulator_openai, batch.id, timeout=30)
    assert batch.status == "failed"
    assert batch.errors.data[-1].code == "too_many_tasks"


def test_missing_input_file_fails_asynchronously(emulator_openai):
    batch = emulator_openai.batches.create(
        input_file_id="file-doesnotexist", endpoint=CHAT, completion_window="24h"
    )
    assert batch.status == "validating"
    batch = wait_batch(emulator_openai, batch.id)
    assert batch.status == "failed"
    error = batch.errors.data[0]
    assert (error.code, error.param, error.line) == ("invalid_request", "file_id", None)
    assert "Cannot find file file-doesnotexist" in error.message


def test_moderations_model_is_optional(emulator_openai):
    line = _line(0, url="/v1/moderations", body={"input": "hello"})
    batch = create_batch(emulator_openai, [line], "/v1/moderations")
    batch = wait_batch(emulator_openai, batch.id)
    assert batch.status == "completed", batch.errors
    assert batch.model == "omni-moderation-latest"


def test_configured_model_globs(emulator_factory):
    emu = emulator_factory(models=["gpt-4o-mini-batch", "my-*"])
    client = openai_client(emu)
    ok = [_line(0, body={"model": "my-model", "messages": []})]
    assert wait_batch(client, create_batch(client, ok).id).status == "completed"
    bad = [_line(0)]
    batch = wait_batch(client, create_batch(client, bad).id)
    assert batch.errors.data[0].code == "model_not_found"
