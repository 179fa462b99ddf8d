"""OpenAI Batches through the official SDK (strict response validation)."""

from __future__ import annotations

import base64
import time
from array import array

import openai
import pytest
from openai.types import Batch, Completion, CreateEmbeddingResponse, ModerationCreateResponse
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from tests._emulator import openai_client
from tests.emulator.helpers import (
    ENDED,
    create_batch,
    read_jsonl,
    request_line,
    token,
    upload,
    wait_batch,
)

BODY_MODELS = {
    "/v1/chat/completions": ChatCompletion,
    "/v1/embeddings": CreateEmbeddingResponse,
    "/v1/responses": Response,
    "/v1/completions": Completion,
    "/v1/moderations": ModerationCreateResponse,
}


def test_full_lifecycle_chat(emulator, emulator_openai):
    emulator.set_timings(validating_delay_s=0.2, processing_rate_rps=200, finalizing_delay_s=0.2)
    lines = [request_line(i) for i in range(60)]
    batch = create_batch(emulator_openai, lines, metadata={"claim": "c-1"})
    assert batch.status == "validating"
    assert batch.request_counts.total == 0
    assert batch.in_progress_at is None
    assert batch.expires_at == batch.created_at + 86400
    assert batch.metadata == {"claim": "c-1"}

    seen = set()
    deadline = time.monotonic() + 10
    while batch.status not in ENDED and time.monotonic() < deadline:
        batch = emulator_openai.batches.retrieve(batch.id)
        seen.add(batch.status)
        time.sleep(0.01)
    assert {"validating", "in_progress", "finalizing", "completed"} <= seen
    assert batch.status == "completed"
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at
    assert batch.failed_at is batch.expired_at is batch.cancelled_at is batch.cancelling_at is None
    assert batch.request_counts.model_dump() == {"total": 60, "completed": 60, "failed": 0}
    assert batch.error_file_id is None
    assert batch.model == "gpt-4o-mini"
    assert batch.usage.input_tokens > 0 and batch.usage.output_tokens > 0
    assert batch.usage.total_tokens == batch.usage.input_tokens + batch.usage.output_tokens

    output = emulator_openai.files.retrieve(batch.output_file_id)
    assert output.purpose == "batch_output"
    assert output.filename == f"{batch.id}_output.jsonl"
    lines_out = read_jsonl(emulator_openai, batch.output_file_id)
    assert [ln["custom_id"] for ln in lines_out] != [ln["custom_id"] for ln in lines]
    assert sorted(ln["custom_id"] for ln in lines_out) == sorted(ln["custom_id"] for ln in lines)
    for line in lines_out:
        i = int(line["custom_id"].split("-")[1])
        assert line["id"].startswith("batch_req_")
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        body = ChatCompletion.model_validate(line["response"]["body"])
        assert body.choices[0].message.content == f"echo: say {token(i)}"
        assert body.usage.prompt_tokens > 0


def test_progress_counts_count_up(emulator, emulator_openai):
    emulator.set_timings(processing_rate_rps=40)
    batch = create_batch(emulator_openai, [request_line(i) for i in range(40)])
    batch = wait_batch(emulator_openai, batch.id, {"in_progress"})
    time.sleep(0.3)
    batch = emulator_openai.batches.retrieve(batch.id)
    assert batch.status == "in_progress"
    assert batch.request_counts.total == 40
    assert 0 < batch.request_counts.completed < 40
    assert wait_batch(emulator_openai, batch.id).request_counts.completed == 40


@pytest.mark.parametrize("endpoint", list(BODY_MODELS))
def test_each_endpoint_returns_its_body_shape(emulator_openai, endpoint):
    batch = create_batch(emulator_openai, [request_line(i, endpoint) for i in range(3)], endpoint)
    batch = wait_batch(emulator_openai, batch.id)
    assert batch.status == "completed", batch.errors
    for line in read_jsonl(emulator_openai, batch.output_file_id):
        body = BODY_MODELS[endpoint].model_validate(line["response"]["body"], strict=False)
        i = int(line["custom_id"].split("-")[1])
        if endpoint == "/v1/chat/completions":
            assert body.choices[0].message.content == f"echo: say {token(i)}"
        elif endpoint == "/v1/completions":
            assert body.choices[0].text == f"echo: say {token(i)}"
        elif endpoint == "/v1/responses":
            assert body.output_text == f"echo: say {token(i)}"
        elif endpoint == "/v1/embeddings":
            assert len(body.data[0].embedding) == 8
        else:
            assert body.results[0].flagged is False


def test_embeddings_are_deterministic_and_sized(emulator_openai):
    lines = [
        request_line(0, "/v1/embeddings"),
        request_line(
            1,
            "/v1/embeddings",
            body={"model": "text-embedding-3-small", "input": "say token-00000"},
        ),
        request_line(
            2,
            "/v1/embeddings",
            body={"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 4},
        ),
        request_line(
            3,
            "/v1/embeddings",
            body={
                "model": "text-embedding-3-small",
                "input": "a",
                "encoding_format": "base64",
                "dimensions": 4,
            },
        ),
    ]
    batch = wait_batch(emulator_openai, create_batch(emulator_openai, lines, "/v1/embeddings").id)
    by_id = {
        ln["custom_id"]: ln["response"]["body"]
        for ln in read_jsonl(emulator_openai, batch.output_file_id)
    }
    assert by_id["req-0"]["data"][0]["embedding"] == by_id["req-1"]["data"][0]["embedding"]
    vector = by_id["req-0"]["data"][0]["embedding"]
    assert abs(sum(v * v for v in vector) - 1.0) < 1e-9
    pair = by_id["req-2"]["data"]
    assert [d["index"] for d in pair] == [0, 1] and len(pair[0]["embedding"]) == 4
    assert pair[0]["embedding"] != pair[1]["embedding"]
    decoded = array("f", base64.b64decode(by_id["req-3"]["data"][0]["embedding"]))
    assert [round(v, 5) for v in decoded] == [round(v, 5) for v in pair[0]["embedding"]]


def test_validating_then_finalizing_phases_are_visible(emulator, emulator_openai):
    emulator.set_timings(validating_delay_s=0.3, finalizing_delay_s=0.4)
    batch = create_batch(emulator_openai, [request_line(0)])
    assert emulator_openai.batches.retrieve(batch.id).status == "validating"
    batch = wait_batch(emulator_openai, batch.id, {"finalizing"} | ENDED)
    assert batch.status == "finalizing"
    assert batch.finalizing_at is not None and batch.completed_at is None
    assert batch.output_file_id is None
    assert batch.request_counts.completed == 1
    batch = wait_batch(emulator_openai, batch.id)
    assert batch.status == "completed" and batch.completed_at >= batch.finalizing_at


def test_cancel_in_progress_keeps_partial_results(emulator, emulator_openai):
    emulator.set_timings(processing_rate_rps=50, finalizing_delay_s=0.2)
    batch = create_batch(emulator_openai, [request_line(i) for i in range(100)])
    wait_batch(emulator_openai, batch.id, {"in_progress"})
    time.sleep(0.3)
    cancelled = emulator_openai.batches.cancel(batch.id)
    assert cancelled.status == "cancelling"
    assert cancelled.cancelling_at is not None
    batch = wait_batch(emulator_openai, batch.id)
    assert batch.status == "cancelled"
    assert batch.cancelled_at >= batch.cancelling_at
    assert batch.finalizing_at is None and batch.completed_at is None
    done = read_jsonl(emulator_openai, batch.output_file_id)
    never = read_jsonl(emulator_openai, batch.error_file_id)
    assert 0 < len(done) < 100
    assert len(done) + len(never) == 100
    assert batch.request_counts.model_dump() == {
        "total": 100,
        "completed": len(done),
        "failed": len(never),
    }
    ran = {int(ln["custom_id"].split("-")[1]) for ln in done}
    assert ran == set(range(len(done)))
    for line in never:
        assert line["response"] is None
        assert line["error"]["code"] == "batch_cancelled"
    again = emulator_openai.batches.cancel(batch.id)
    assert again.status == "cancelled"


def test_cancel_while_validating(emulator, emulator_openai):
    emulator.set_timings(validating_delay_s=0.5, finalizing_delay_s=0.1)
    batch = create_batch(emulator_openai, [request_line(0)])
    assert emulator_openai.batches.cancel(batch.id).status == "cancelling"
    batch = wait_batch(emulator_openai, batch.id)
    assert batch.status == "cancelled"
    assert batch.output_file_id is None and batch.error_file_id is None
    assert batch.in_progress_at is None


def test_cancel_after_completion_is_409_without_retries(emulator):
    client = openai.OpenAI(
        base_url=emulator.openai_base_url,
        api_key=emulator.api_key,
        _strict_response_validation=True,
        max_retries=2,
    )
    batch = wait_batch(client, create_batch(client, [request_line(0)]).id)
    before = emulator.stats()["api_requests"]
    with pytest.raises(openai.ConflictError) as info:
        client.batches.cancel(batch.id)
    assert info.value.body["message"] == "Cannot cancel a batch with status 'completed'."
    assert emulator.stats()["api_requests"] == before + 1


def test_window_expiry_keeps_partial_results(emulator_factory):
    emu = emulator_factory(completion_window_s=1.0, processing_rate_rps=30)
    client = openai_client(emu)
    batch = create_batch(client, [request_line(i) for i in range(60)])
    assert batch.expires_at == int(batch.created_at + 1.0)
    batch = wait_batch(client, batch.id)
    assert batch.status == "expired"
    assert batch.expired_at is not None and batch.completed_at is None
    done = read_jsonl(client, batch.output_file_id)
    expired = read_jsonl(client, batch.error_file_id)
    assert 0 < len(done) <= 30
    assert len(done) + len(expired) == 60
    assert {ln["error"]["code"] for ln in expired} == {"batch_expired"}
    assert all(ln["response"] is None for ln in expired)
    assert batch.request_counts.failed == len(expired)


def test_list_pagination_to_the_end(emulator_openai):
    source = upload(emulator_openai, [request_line(0)])
    created = [
        emulator_openai.batches.create(
            input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for _ in range(7)
    ]
    listed = [b.id for b in emulator_openai.batches.list(limit=3)]
    assert listed == list(reversed(created))
    page = emulator_openai.batches.list(limit=3)
    assert len(page.data) == 3 and page.has_more is True
    last = emulator_openai.batches.list(limit=3, after=created[1])
    assert [b.id for b in last.data] == [created[0]] and last.has_more is False


def test_every_field_present_with_nulls(emulator, emulator_openai):
    emulator.set_timings(validating_delay_s=5)
    batch = create_batch(emulator_openai, [request_line(0)])
    raw = emulator_openai.batches.with_raw_response.retrieve(batch.id).http_response.json()
    expected = set(Batch.model_fields)
    assert expected <= set(raw)
    assert raw["errors"] is None and raw["output_file_id"] is None and raw["model"] is None
    assert raw["request_counts"] == {"total": 0, "completed": 0, "failed": 0}


def test_all_requests_failed_is_completed_without_output(emulator, emulator_openai):
    emulator.set_faults(request_error_fraction=1.0, request_error_status=500)
    batch = wait_batch(emulator_openai, create_batch(emulator_openai, [request_line(0)]).id)
    assert batch.status == "completed"
    assert batch.output_file_id is None and batch.error_file_id is not None
    assert batch.request_counts.model_dump() == {"total": 1, "completed": 0, "failed": 1}


def test_output_expires_after(emulator_openai):
    batch = create_batch(
        emulator_openai,
        [request_line(0)],
        extra_body={"output_expires_after": {"anchor": "created_at", "seconds": 7200}},
    )
    batch = wait_batch(emulator_openai, batch.id)
    output = emulator_openai.files.retrieve(batch.output_file_id)
    assert output.expires_at - output.created_at == 7200


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"endpoint": "/v1/invalid/endpoint"}, "endpoint"),
        ({"completion_window": "1h"}, "completion_window"),
        ({"completion_window": "48h"}, "completion_window"),
        ({"completion_window": ""}, "completion_window"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata.k"),
        ({"metadata": {"tags": ["a", "b"]}}, "metadata.tags"),
        ({"metadata": {"n": 3}}, "metadata.n"),
        (
            {"extra_body": {"output_expires_after": {"anchor": "x", "seconds": 3600}}},
            "output_expires_after",
        ),
        (
            {"extra_body": {"output_expires_after": {"anchor": "created_at", "seconds": 5}}},
            "output_expires_after.seconds",
        ),
    ],
)
def test_create_400s(emulator_openai, kwargs, param):
    source = upload(emulator_openai, [request_line(0)])
    args = {
        "input_file_id": source.id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        **kwargs,
    }
    with pytest.raises(openai.BadRequestError) as info:
        emulator_openai.batches.create(**args)
    assert info.value.body["param"] == param
    assert info.value.body["type"] == "invalid_request_error"


def test_retrieve_and_cancel_unknown_batch_404(emulator_openai):
    with pytest.raises(openai.NotFoundError):
        emulator_openai.batches.retrieve("batch_missing")
    with pytest.raises(openai.NotFoundError):
        emulator_openai.batches.cancel("batch_missing")
